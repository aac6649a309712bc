"""Atomic checkpoint writes and careful reads.

Writes go to a temporary file in the same directory, are fsynced, then renamed
over the target (``os.replace`` is atomic on POSIX), so a kill at any moment
leaves either the old or the new checkpoint, never a truncated one.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

#: Marks our checkpoints; a file without it is "foreign".
FORMAT = "adakd-checkpoint-v1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save ``payload`` (plus the format marker) atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    try:
        atomic_write_bytes(Path(path), buffer.getvalue())
    except OSError as exc:
        raise CheckpointError(
            f"could not write checkpoint {path}: {exc.strerror or exc}. "
            "Free disk space or choose a writable output_dir; the previous checkpoint is intact."
        ) from None


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an adakd checkpoint, or a plain state_dict (wrapped as ``{"model": sd}``)."""
    path = Path(path)
    if path.is_dir():
        for candidate in ("checkpoints/student.pt", "checkpoints/last.pt", "student.pt", "last.pt"):
            if (path / candidate).is_file():
                path = path / candidate
                break
        else:
            raise CheckpointError(f"{path} is a directory without checkpoints/student.pt or last.pt; "
                                  "point at a run directory of a finished run or at a .pt file.")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}. Check the path (run dirs hold checkpoints/).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, pickle garbage, wrong format
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:120]}). "
            "It may be truncated or not a checkpoint; use another file (e.g. checkpoints/last.pt)."
        ) from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"format": "state_dict", "model": obj}
    for key in ("model", "state_dict", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return {"format": "foreign", "model": obj[key]}
    raise CheckpointError(f"{path} does not hold model weights adakd can read "
                          "(expected an adakd checkpoint or a state_dict).")


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with one clear message when the weights do not fit the architecture."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: checkpoint {tuple(state_dict[k].shape)} "
                         f"vs model {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"{what} does not fit {type(model).__name__}: " + "; ".join(parts) +
            ". Check the model name/kwargs, num_classes and input channels against the checkpoint."
        )
    model.load_state_dict(state_dict)
