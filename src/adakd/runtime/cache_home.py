"""Where adakd keeps what it can rebuild: ``$ADAKD_CACHE``, default ``~/.cache/adakd``.

Its sub-folders: ``teachers/`` (trained teacher recipes, published teachers unless ``$ADAKD_TEACHERS``),
``teacher_outputs/`` (the teacher-output caches), ``fast_path/`` (the probe's timings)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """``$ADAKD_CACHE`` (expanded), else ``~/.cache/adakd``; read at each call, so tests can redirect it."""
    return Path(os.environ.get("ADAKD_CACHE", Path.home() / ".cache" / "adakd")).expanduser()
