"""Atomic checkpoint writes and careful reads.

Writes go to a temporary file in the same directory, are fsynced, then renamed
over the target (``os.replace`` is atomic on POSIX), so a kill at any moment
leaves either the old or the new checkpoint, never a truncated one.

Reads never run code: every file is opened with ``torch.load(weights_only=True)``
(tensors, dicts, lists and primitives only), so a crafted pickle is rejected
before anything in it executes. Our checkpoints carry ``sha256``, a digest of
their whole payload (:func:`payload_digest`); a file whose digest does not match
(a flipped bit, an edit) is refused.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models.foreign import (canonical_format, is_state_dict, load_foreign_state_dict, native_format,
                              unwrap_state_dict)
from ..runtime.atomic import atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported: the writers' one helper)

#: Marks our checkpoints; a file without it is "foreign".
FORMAT = "adakd-checkpoint-v1"


def _digest_into(h: "hashlib._Hash", key: str, value: Any) -> None:
    h.update(key.encode() + b"\0")
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(b"D%d" % len(value))
        for k, v in value.items():
            _digest_into(h, f"{key}/{k!r}", v)
    elif isinstance(value, (list, tuple)):
        h.update(b"L%d" % len(value))
        for i, v in enumerate(value):
            _digest_into(h, f"{key}/{i}", v)
    else:
        h.update(repr(value).encode())


def payload_digest(payload: dict[str, Any]) -> str:
    """SHA-256 over every tensor's bytes (with dtype and shape) and every other value of ``payload``
    (except ``sha256`` itself), in order."""
    h = hashlib.sha256()
    for key, value in payload.items():
        if key != "sha256":
            _digest_into(h, key, value)
    return h.hexdigest()


def save_checkpoint(path: Path, payload: dict[str, Any], keep_previous: bool = False) -> None:
    """torch.save ``payload`` (plus the format marker and its digest) atomically. With ``keep_previous``
    the file being replaced stays as ``<name>.prev<suffix>`` (the fallback if the new one is damaged)."""
    path = Path(path)
    body = {"format": FORMAT, **payload}
    body["sha256"] = payload_digest(body)
    buffer = io.BytesIO()
    torch.save(body, buffer)
    try:
        if keep_previous and path.is_file():
            _keep_previous(path)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise CheckpointError(
            f"could not write checkpoint {path}: {exc.strerror or exc}. "
            "Free disk space or choose a writable output_dir; the previous checkpoint is intact."
        ) from None


def previous_path(path: Path) -> Path:
    """Where :func:`save_checkpoint` keeps the previous version of ``path`` (``last.pt`` -> ``last.prev.pt``)."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _keep_previous(path: Path) -> None:
    """Atomically make ``previous_path(path)`` a copy of ``path`` (a hard link where the filesystem allows)."""
    prev = previous_path(path)
    if prev.exists() and os.path.samefile(path, prev):
        # already its copy: the write after the last keep was cut short (a rename of a hard link onto the same
        # file does nothing, and would leave the temporary link behind)
        return
    tmp = prev.with_name(f".{prev.name}.{os.getpid()}.tmp")
    try:
        os.link(path, tmp)
    except OSError:
        import shutil

        shutil.copyfile(path, tmp)
    os.replace(tmp, prev)


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove ``.<name>.*.tmp`` files a killed writer left in ``folder``; returns them."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an adakd checkpoint, or a plain state_dict (wrapped as ``{"model": sd}``), without running
    any code from the file; an adakd checkpoint whose digest does not match is refused."""
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
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle garbage, wrong format, a pickle that would run code
        if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path} was refused: it holds Python objects other than tensors and plain data (a pickle that "
                "could run code when loaded). adakd loads only weights; re-save it as a state_dict of tensors "
                "(or an adakd checkpoint of this version) if you trust its source.") from None
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:120]}). "
            "It may be truncated or not a checkpoint; use another file (e.g. checkpoints/last.pt)."
        ) from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if "sha256" in obj and payload_digest(obj) != obj["sha256"]:
            raise CheckpointError(f"{path} failed its integrity check (SHA-256 of the payload differs from the "
                                  "one written with it): the file was damaged or modified. Use another "
                                  "checkpoint (e.g. checkpoints/last.prev.pt) or rerun.")
        return obj
    state_dict = unwrap_state_dict(obj)
    if state_dict is not None:
        return {"format": "state_dict" if is_state_dict(obj) else "foreign", "model": state_dict}
    raise CheckpointError(f"{path} does not hold model weights adakd can read (expected an adakd checkpoint, "
                          "a state_dict, or a dict holding one under model/state_dict/net/student).")


def load_model_weights(model: nn.Module, source: str | os.PathLike[str] | dict[str, Any],
                       format: str | None = None, what: str | None = None) -> str:
    """Load weights into ``model`` from a file (read weights-only; ours SHA-256 checked) or a state dict /
    checkpoint object, in any layout the model knows (models/foreign.py); returns the layout read.

    Our own checkpoints load as they were saved (``format`` must be auto or the model's own);
    other files are matched against the model's layouts, ``format`` forcing one."""
    fmt = canonical_format(format)
    if isinstance(source, (str, os.PathLike)):
        what = what or f"weights file {source}"
        state = load_checkpoint(source)
    else:
        what = what or "weights"
        state = source
    if isinstance(state, dict) and state.get("format") == FORMAT:
        own = native_format(model)
        if fmt not in ("auto", own):
            raise ConfigError(f"{what} is an adakd checkpoint (layout {own!r}); drop format {format!r} "
                              "or set it to auto.")
        load_weights(model, state["model"], what)
        return own
    try:
        return load_foreign_state_dict(model, state.get("model", state) if isinstance(state, dict) else state, fmt)
    except ConfigError as exc:
        raise ConfigError(f"{what} does not fit: {exc}") from None


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
