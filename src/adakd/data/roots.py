"""Where datasets live: explicit root > ``$ADAKD_DATA`` > ``~/.cache/adakd/data``."""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "ADAKD_DATA"
DEFAULT_ROOT = Path("~/.cache/adakd/data")


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """The data root: ``root`` if given, else ``$ADAKD_DATA`` if set, else ``~/.cache/adakd/data``."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_ROOT.expanduser()


def root_hint() -> str:
    """A sentence telling the user how to point adakd at their data."""
    return (f"Set data.root=DIR in the config (on the command line: `adakd train CONFIG data.root=DIR`; "
            f"`adakd eval`/`plot` take --data-root DIR) or the {ENV_VAR} environment variable "
            "to the folder that holds it.")
