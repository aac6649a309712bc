"""adakd: knowledge distillation for PyTorch, with the adaptive methods ABL, SAKD and AEKT.

The Python API lives in :mod:`adakd.api` and is re-exported here lazily
(``import adakd`` stays cheap; ``adakd.train``, ``adakd.build_model`` ... load on first use).
"""
from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

_API_NAMES = {
    "RunConfig", "load_config", "train", "Trainer", "check_config", "evaluate_checkpoint", "build_model",
    "build_distiller", "build_data", "load_split", "DataConfig", "DistillContext", "MODELS", "DATASETS",
    "DISTILLERS", "STRATEGIES", "load_foreign_state_dict", "to_reference_state_dict",
}


def __getattr__(name: str) -> Any:
    if name in _API_NAMES:
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module 'adakd' has no attribute {name!r}")
