"""The Python API: everything the CLI does, as functions.

    import adakd
    cfg = adakd.load_config("configs/fashion_mnist/kd.yaml", ["train.epochs=2"])
    summary = adakd.train(cfg)                       # -> dict (also in RUN_DIR/summary.json)
    adakd.evaluate_checkpoint(summary["run_dir"])    # -> {"top1": ..., "top5": ...}

    student = adakd.build_model("resnet8", num_classes=10, in_channels=1, image_size=28)
    teacher = adakd.build_model("resnet20", num_classes=10, in_channels=1, image_size=28)
    loss = adakd.build_distiller({"kd": {"temperature": 4}}, student, teacher)
    terms = loss(student.forward_features(x), teacher.forward_features(x), adakd.DistillContext(labels=y))
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import losses as _losses  # noqa: F401  (registers the distillers)
from . import strategies as _strategies  # noqa: F401  (registers the strategies)
from .config import RunConfig, load_config
from .data import DataConfig, build_data, load_split
from .engine.components import check_config, load_student, resolve_checkpoint
from .engine.checkpoint import load_checkpoint, load_model_weights, load_weights
from .runtime.device import resolve_device
from .engine.evaluate import evaluate
from .engine.trainer import Trainer, train
from .errors import CheckpointError, ConfigError
from .losses.base import DistillContext
from .losses.build import build_distiller
from .models import build_model as _build_model, model_options
from .models.foreign import to_reference_state_dict
from .registry import DATASETS, DISTILLERS, MODELS, STRATEGIES

__all__ = [
    "RunConfig", "load_config", "train", "Trainer", "check_config", "evaluate_checkpoint", "build_model",
    "build_distiller", "build_data", "load_split", "DataConfig", "DistillContext", "MODELS", "DATASETS",
    "DISTILLERS", "STRATEGIES", "load_foreign_state_dict", "to_reference_state_dict",
]

#: Load weights from a file (read weights-only) or a state dict, in any layout the model knows (ours,
#: RepDistiller/mdistiller's, torchvision's); returns the layout read. See adakd/models/foreign.py.
load_foreign_state_dict = load_model_weights


def build_model(name: str, num_classes: int = 100, in_channels: int = 3, image_size: int = 32,
                weights: str | Path | None = None, weights_format: str | None = None, **kwargs: Any) -> Any:
    """The registered model ``name`` (see :func:`adakd.models.build_model`), with ``weights`` loaded when
    given: an adakd checkpoint or run's student, a RepDistiller/mdistiller file (``ckpt_epoch_240.pth``,
    a saved student with ``module.``/``student.`` prefixes), a bare state_dict; ``weights_format`` forces a
    layout (adakd, reference, repdistiller, mdistiller, torchvision). ``tv:``/``timm:`` models take
    ``weights`` themselves (a weight name or file, see their adapters)."""
    if weights is not None and "weights" in model_options(name):
        return _build_model(name, num_classes, in_channels, image_size, weights=str(weights), **kwargs)
    model = _build_model(name, num_classes, in_channels, image_size, **kwargs)
    if weights is not None:
        path = Path(weights).expanduser()
        load_model_weights(model, path, weights_format, f"weights {path} for {name}")
    return model


def _read_run_config(run_dir: Path) -> RunConfig | None:
    path = run_dir / "config.yaml"
    return load_config(path) if path.is_file() else None


def evaluate_checkpoint(target: str | Path, which: str = "final", data_root: str | None = None,
                        device: str = "auto", split: str = "test", model: str | None = None,
                        data: str | dict[str, Any] | None = None, weights_format: str | None = None,
                        model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Top-1/top-5 of a run directory's student (final, best or last) or of a checkpoint file.

    A file without our metadata (a RepDistiller/mdistiller teacher or student, a state_dict) needs the
    architecture and the data: ``model`` (a zoo name) and ``data`` (a dataset name, or DataConfig fields);
    the weights' layout is detected (``weights_format`` forces one, see adakd/models/foreign.py)."""
    path = resolve_checkpoint(target, which)
    dev = resolve_device(device)
    if model is None and data is None:
        net, meta = load_student(path)
        name, data_cfg = meta["model"], DataConfig.model_validate(meta["data"])
    else:
        if model is None or data is None:
            raise ConfigError("evaluating a weight file by architecture needs both --model NAME and --data DATASET "
                              "(e.g. --model resnet32x4 --data cifar100).")
        name = model
        data_cfg = DataConfig.model_validate({"name": data} if isinstance(data, str) else data)
    if data_root:
        data_cfg = data_cfg.model_copy(update={"root": data_root})
    bundle = build_data(data_cfg, dev, seed=data_cfg.seed, log=None)
    if model is not None:
        info = bundle.info
        net = build_model(name, num_classes=info.num_classes, in_channels=info.in_channels,
                          image_size=data_cfg.image_size or info.image_size, weights=path,
                          weights_format=weights_format, **(model_kwargs or {}))
    net.eval().to(dev)
    loader = bundle.test if split == "test" else bundle.val
    if loader is None:
        raise ConfigError(f"the run has no {split} split: it held none out of its training set "
                          "(data.val_fraction was 0). Evaluate it with --split test, or train with data.val_fraction > 0.")
    result = evaluate(net, loader, dev, "fp32")
    return {"model": name, "dataset": data_cfg.name, "split": split, "checkpoint": str(path), **result}
