"""A fault for tests/test_faults4.py, loaded by every rank through the config's ``imports:``: on the first
attempt of a torchrun job (``TORCHELASTIC_RESTART_COUNT`` 0), rank 0 SIGKILLs itself halfway through writing
its ``ADAKD_DIE_AT_WRITE``-th ``last.pt`` (half of the bytes in the temporary file, nothing renamed)."""
from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import adakd.engine.checkpoint as checkpoint

_real_write = checkpoint.atomic_write_bytes
_writes = [0]


def _dying_write(path, data):
    path = Path(path)
    if path.name == "last.pt" and os.environ.get("RANK") == "0" \
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        _writes[0] += 1
        if _writes[0] == int(os.environ.get("ADAKD_DIE_AT_WRITE", "0")):
            fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.write(fd, data[: len(data) // 2])
            os.fsync(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    return _real_write(path, data)


if os.environ.get("ADAKD_DIE_AT_WRITE"):
    checkpoint.atomic_write_bytes = _dying_write
