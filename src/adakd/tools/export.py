"""``adakd export``: the distilled student alone, as ONNX, TorchScript or safetensors, checked.

    export_student("runs/fmnist-kd", "onnx")            # -> runs/fmnist-kd/export/student.onnx (+ .json)
    export_student("runs/fmnist-kd", "torchscript", which="best", out="model.pt")

The student is rebuilt from the checkpoint's ``meta`` (model name, kwargs, classes, input shape) and
its weights (``checkpoints/student.pt`` or ``best.pt`` hold the student only: no connectors, auxiliary
heads or policies). The exported file is then reloaded and its outputs on a random batch are compared
with the PyTorch student's, ``max |z_export - z_torch| <= atol + rtol * max |z_torch|``:

* ``torchscript``: ``torch.jit.trace`` then ``torch.jit.load``; checked on a batch of another size.
* ``safetensors``: the state dict (``safetensors`` package, ``pip install 'adakd[safetensors]'``),
  reloaded into a freshly built model; weights and outputs must be equal.
* ``reference``: ``{"model": state_dict}`` with the reference code's key names (RepDistiller/mdistiller,
  models/foreign.py), as their ``load_state_dict(torch.load(f)["model"])`` reads a teacher; reloaded (weights
  only) into a fresh model through the reference layout: weights and outputs must be equal.
* ``onnx``: ``torch.onnx.export`` (``onnx`` + ``onnxscript``, ``pip install 'adakd[onnx]'``) with a
  dynamic batch axis; outputs compared with onnxruntime when it is installed, otherwise the graph is
  only validated by ``onnx.checker`` and the sidecar says so.

The file is written under a temporary name and renamed only after the check passes. A JSON sidecar
(``<file>.json``) records what a deployment needs: the architecture, the input shape and layout,
and the normalisation ``x = (pixel / 255 - mean) / std`` of the training data.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..version import __version__
from ..engine.checkpoint import atomic_write_text, load_weights
from ..engine.components import load_student, resolve_checkpoint
from ..errors import AdakdError, CheckpointError, ConfigError
from ..models import build_model
from ..models.foreign import load_foreign_state_dict, to_reference_state_dict

#: format -> file suffix of the export
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors",
                           "reference": ".reference.pth"}
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class ExportMismatch(AdakdError):
    """The exported model's outputs differ from the PyTorch student's beyond the tolerance."""


@dataclass(frozen=True)
class CheckResult:
    backend: str  # what computed the exported model's outputs
    max_abs_diff: float | None  # None: outputs were not compared (graph check only)
    tolerance: float | None
    batch: int
    note: str = ""


# --------------------------------------------------------------------------- the student

def _dataset_info(meta: dict[str, Any]) -> Any:
    """The dataset's DatasetInfo when its reader can be opened here (metadata only), else None."""
    data = meta.get("data") or {}
    if not data.get("name"):
        return None
    from ..data.build import open_dataset

    try:
        return open_dataset(data["name"], data.get("root"), False, data.get("image_size"),
                            **(data.get("options") or {})).info
    except (AdakdError, OSError):
        return None


def deployment_facts(meta: dict[str, Any]) -> dict[str, Any]:
    """Normalisation and class names: from ``meta`` (new checkpoints), else from the dataset's reader."""
    mean, std = meta.get("mean"), meta.get("std")
    names = meta.get("class_names")
    if mean is None or std is None or names is None:
        info = _dataset_info(meta)
        if info is not None:
            mean = list(info.mean) if mean is None else mean
            std = list(info.std) if std is None else std
            names = list(info.class_names) if names is None else names
    norm = None
    if mean is not None and std is not None:
        norm = {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
                "formula": "x[c] = (pixel[c] / 255 - mean[c]) / std[c]; pixels 0..255, RGB (or grey), NCHW float32"}
    return {"normalization": norm, "class_names": names}


# --------------------------------------------------------------------------- per format

@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation chatter (torch.jit, the ONNX exporter's notes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _require(module: str, extra: str, what: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise AdakdError(f"{what} needs the '{module.split('.')[0]}' package: pip install -c constraints.txt "
                         f"'adakd[{extra}]' (the constraints file keeps the installed torch)") from None


def _close(got: Tensor, ref: Tensor, atol: float, rtol: float) -> tuple[float, float]:
    diff = float((got.float() - ref.float()).abs().max())
    return diff, atol + rtol * float(ref.abs().max())


def _write_torchscript(model: nn.Module, x: Tensor, path: Path) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model, x)
        torch.jit.save(traced, str(path))


def _check_torchscript(path: Path, x: Tensor, ref: Tensor, meta: dict[str, Any]) -> CheckResult:
    with _quiet(), torch.no_grad():
        loaded = torch.jit.load(str(path), map_location="cpu")
        got = loaded(x)
    diff, tol = _close(got, ref, 1e-5, 1e-5)
    return CheckResult("torch.jit.load", diff, tol, int(x.shape[0]))


def _write_safetensors(model: nn.Module, x: Tensor, path: Path, meta: dict[str, Any]) -> None:
    st = _require("safetensors.torch", "safetensors", "safetensors export")
    # clone: safetensors refuses tensors that share storage
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    header = {"format": "pt", "adakd_model": meta["model"], "adakd_kwargs": json.dumps(meta.get("kwargs", {})),
              "num_classes": str(meta["num_classes"]), "in_channels": str(meta["in_channels"]),
              "image_size": str(meta["image_size"])}
    st.save_file(tensors, str(path), metadata=header)


def _check_safetensors(path: Path, x: Tensor, ref: Tensor, meta: dict[str, Any]) -> CheckResult:
    st = _require("safetensors.torch", "safetensors", "safetensors export")
    fresh = _fresh(meta)
    load_weights(fresh, st.load_file(str(path)), f"exported {path.name}")
    with torch.no_grad():
        got = fresh.eval()(x)
    diff, _ = _close(got, ref, 0.0, 0.0)
    return CheckResult("safetensors.torch.load_file + a fresh model", diff, 0.0, int(x.shape[0]))


def _fresh(meta: dict[str, Any]) -> nn.Module:
    return build_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                       image_size=meta["image_size"], **meta.get("kwargs", {}))


def _write_reference(model: nn.Module, x: Tensor, path: Path, meta: dict[str, Any]) -> None:
    torch.save({"model": to_reference_state_dict(model, "reference"), "arch": meta["model"]}, path)


def _check_reference(path: Path, x: Tensor, ref: Tensor, meta: dict[str, Any]) -> CheckResult:
    fresh = _fresh(meta)
    load_foreign_state_dict(fresh, torch.load(path, map_location="cpu", weights_only=True), "reference")
    with torch.no_grad():
        got = fresh.eval()(x)
    diff, _ = _close(got, ref, 0.0, 0.0)
    return CheckResult("torch.load(weights_only) + the reference layout into a fresh model", diff, 0.0,
                       int(x.shape[0]))


def _write_onnx(model: nn.Module, x: Tensor, path: Path) -> None:
    _require("onnx", "onnx", "ONNX export")
    _require("onnxscript", "onnx", "ONNX export")
    batch = torch.export.Dim("batch", min=1)
    arg = next(iter(_forward_arg_names(model)), "x")
    import logging

    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..." notes
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes={arg: {0: batch}},
                                        verbose=False)
            program.save(str(path))
    except AdakdError:
        raise
    except Exception as exc:  # the exporter's own errors are long; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdakdError(f"torch.onnx.export failed for this model ({type(exc).__name__}: {first[:300]}). "
                         "Try --format torchscript or safetensors.") from None
    finally:
        exporter_log.setLevel(level)


def _forward_arg_names(model: nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(model.forward).parameters if p != "self"]


def _check_onnx(path: Path, x: Tensor, ref: Tensor, meta: dict[str, Any]) -> CheckResult:
    onnx = _require("onnx", "onnx", "ONNX export")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportMismatch(f"the exported ONNX graph is invalid ({str(exc).splitlines()[0][:200]}).") from None
    try:
        import onnxruntime as ort
    except ImportError:
        return CheckResult("onnx.checker", None, None, int(x.shape[0]),
                           "graph validated by onnx.checker only; outputs not compared (onnxruntime is not "
                           "installed: pip install onnxruntime)")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    diff, tol = _close(got, ref, 1e-4, 1e-3)
    return CheckResult(f"onnxruntime {ort.__version__} (CPUExecutionProvider)", diff, tol, int(x.shape[0]))


_WRITERS: dict[str, Callable[..., None]] = {
    "onnx": lambda m, x, p, meta: _write_onnx(m, x, p),
    "torchscript": lambda m, x, p, meta: _write_torchscript(m, x, p),
    "safetensors": _write_safetensors,
    "reference": _write_reference,
}
_CHECKERS: dict[str, Callable[[Path, Tensor, Tensor, dict[str, Any]], CheckResult]] = {
    "onnx": _check_onnx, "torchscript": _check_torchscript, "safetensors": _check_safetensors,
    "reference": _check_reference,
}


# --------------------------------------------------------------------------- the command

def default_output(checkpoint: Path, target: Path, fmt: str, which: str) -> Path:
    """``RUN_DIR/export/student<suffix>`` (``best<suffix>`` / ``last<suffix>`` for those); beside a .pt file otherwise."""
    if target.is_dir():
        return target / "export" / ({"final": "student"}.get(which, which) + FORMATS[fmt])
    return checkpoint.with_name(checkpoint.stem + FORMATS[fmt])


def _make_readable(path: Path) -> None:
    """Give a temporary file (mkstemp: mode 0600) the usual permissions of a new file (0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def export_student(target: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str] | None = None,
                   which: str = "final", batch_size: int = 4, seed: int = 0) -> dict[str, Any]:
    """Export the student of ``target`` (run directory or student checkpoint) to ``fmt``, check it, and
    write the sidecar; returns the sidecar's content (with ``path`` and ``sidecar``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    target = Path(target).expanduser()
    checkpoint = resolve_checkpoint(target, which)
    model, meta = load_student(checkpoint)
    path = Path(out).expanduser() if out else default_output(checkpoint, target, fmt, which)
    if path.is_dir():
        path = path / default_output(checkpoint, target, fmt, which).name
    path.parent.mkdir(parents=True, exist_ok=True)

    shape = (int(meta["in_channels"]), int(meta["image_size"]), int(meta["image_size"]))
    gen = torch.Generator().manual_seed(seed)
    x_export = torch.randn((batch_size, *shape), generator=gen)
    x_check = torch.randn((batch_size + 1, *shape), generator=gen)  # another batch size: the batch axis is free
    with torch.no_grad():
        ref = model(x_check)

    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=FORMATS[fmt])
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _WRITERS[fmt](model, x_export, tmp, meta)
        check = _CHECKERS[fmt](tmp, x_check, ref, meta)
        if check.max_abs_diff is not None and not check.max_abs_diff <= (check.tolerance or 0.0):
            raise ExportMismatch(
                f"the {fmt} export's outputs differ from the PyTorch student's: max |diff| {check.max_abs_diff:.3g} "
                f"> tolerance {check.tolerance:.3g} ({check.backend}). Nothing was written; report this model.")
        _make_readable(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

    facts = deployment_facts(meta)
    sidecar: dict[str, Any] = {
        "format": fmt,
        "file": path.name,
        "model": meta["model"],
        "kwargs": meta.get("kwargs", {}),
        "num_classes": int(meta["num_classes"]),
        "in_channels": int(meta["in_channels"]),
        "image_size": int(meta["image_size"]),
        "input_shape": ["batch", *shape],
        "input_layout": "NCHW",
        "input_dtype": "float32",
        "input_name": INPUT_NAME if fmt == "onnx" else None,
        "output": f"{OUTPUT_NAME} [batch, {int(meta['num_classes'])}] (unnormalised; softmax for probabilities)",
        "normalization": facts["normalization"],
        "class_names": facts["class_names"],
        "dataset": (meta.get("data") or {}).get("name"),
        "source_checkpoint": str(checkpoint.resolve()),
        "which": which if target.is_dir() else None,
        "check": {"backend": check.backend, "max_abs_diff": check.max_abs_diff, "tolerance": check.tolerance,
                  "batch": check.batch, **({"note": check.note} if check.note else {})},
        "adakd_version": __version__,
        "torch_version": torch.__version__,
    }
    side = sidecar_path(path)
    atomic_write_text(side, json.dumps(sidecar, indent=2) + "\n")
    _make_readable(side)
    return {"path": str(path), "sidecar": str(side), **sidecar}
