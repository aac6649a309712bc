"""Atomic file writes: the one way every checkpoint, record, JSON file and figure reaches the disk.

The content goes to a temporary file beside the target (``.<name>.<random>.tmp``, same folder, so the
rename stays on one file system), is flushed and fsynced, then renamed over the target with ``os.replace``
(atomic on POSIX and Windows). A kill or an error at any moment leaves the old target or the new one,
never a partial file; on an error the temporary file is removed and the error propagates.

    atomic_write(path, lambda f: fig.savefig(f, format="png"))    # any writer of a binary file object
    atomic_write_json(path, {"top1": 91.2})
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

#: The pattern of the temporary files (``engine.checkpoint.clean_stale_temporaries`` removes leftovers).
TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a binary file open at a temporary path beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not exc.filename:  # name the file (a failed write() does not)
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike[str], data: Any, indent: int | None = 2) -> Path:
    """``json.dumps(data, indent=indent)``, written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent))


def atomic_savefig(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """``fig.savefig`` (matplotlib) written atomically; the format follows the suffix of ``path`` (png default)."""
    fmt = kwargs.pop("format", None) or (Path(path).suffix.lstrip(".") or "png")
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))
