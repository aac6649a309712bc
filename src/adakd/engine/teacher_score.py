"""The teacher's test accuracy, evaluated once per teacher weights and test setup, then read from a file.

Every distillation run reports the frozen teacher's test top-1 (``summary.json``'s ``teacher_top1``); a sweep
of 30 runs with one teacher would evaluate the same weights on the same test split 30 times. The first
run writes the result to ``$ADAKD_CACHE/teachers/test_accuracy/<hash>.json`` (atomically); later runs with
the same key read it. The key (:func:`score_key`) is everything the number depends on:

* the teacher's weights as loaded: sha256 of its state dict (:func:`.teacher_cache.weights_hash`; the
  checkpoint file's layout, adakd or a reference code base's, is already resolved), its architecture;
* the test split and its evaluation transform: dataset name, ``test_subset`` (+ ``data.seed`` that picks
  it), ``image_size``, reader options, recipe, the resolved normalisation and the number of test images;
* how it is computed: device type, precision, memory format, torch version.

A file that is unreadable, corrupt or holds another key is ignored (the teacher is evaluated again and the
file rewritten); a file that cannot be written only costs an evaluation next time.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..runtime import distributed as ddp
from ..runtime.atomic import atomic_write_json
from .evaluate import evaluate
from .teacher import cache_root
from .teacher_cache import weights_hash

FORMAT = "adakd-teacher-test-accuracy-v1"


def score_dir() -> Path:
    """``$ADAKD_CACHE/teachers/test_accuracy`` (beside the trained teacher recipes)."""
    return cache_root() / "test_accuracy"


def score_key(cfg: RunConfig, teacher: nn.Module, data: Any, device: torch.device, precision: str,
              channels_last: bool) -> dict[str, Any]:
    """What the teacher's test accuracy depends on (see the module docstring)."""
    assert cfg.teacher is not None
    d, info = cfg.data, data.info
    return {
        "format": FORMAT,
        "weights_sha256": weights_hash(teacher),
        "teacher": [cfg.teacher.name, cfg.teacher.kwargs],
        "test": {"dataset": d.name, "test_subset": d.test_subset, "subset_seed": d.seed if d.test_subset else None,
                 "image_size": info.image_size, "options": d.options, "recipe": d.recipe,
                 "mean": list(info.mean), "std": list(info.std), "images": int(data.test.num_rows)},
        "device": device.type, "precision": precision, "channels_last": bool(channels_last),
        "torch": torch.__version__,
    }


def score_path(key: dict[str, Any]) -> Path:
    text = json.dumps(key, sort_keys=True, default=str)
    return score_dir() / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.json"


def read_score(path: Path, key: dict[str, Any]) -> float | None:
    """The cached top-1 of ``key``, or None (absent, unreadable, corrupt, or another key's)."""
    try:
        payload = json.loads(path.read_text())
        if payload["key"] != json.loads(json.dumps(key, default=str)):
            return None
        top1 = payload["top1"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(top1) if isinstance(top1, (int, float)) and not isinstance(top1, bool) else None


def write_score(path: Path, key: dict[str, Any], result: dict[str, float]) -> None:
    payload = {"key": json.loads(json.dumps(key, default=str)), "top1": result["top1"], "top5": result["top5"],
               "loss": result["loss"], "count": result["count"]}
    try:
        atomic_write_json(path, payload)
    except OSError:
        pass


def teacher_test_top1(cfg: RunConfig, teacher: nn.Module, data: Any, device: torch.device, precision: str,
                      channels_last: bool, dist: ddp.DistInfo) -> tuple[float, bool]:
    """(the teacher's test top-1, whether it came from the cache). Rank 0 reads and writes the file; on a
    miss every rank of a job evaluates its shard (``evaluate``'s collective)."""
    key = ddp.run_on_main(lambda: score_key(cfg, teacher, data, device, precision, channels_last))
    path = score_path(key)
    cached = ddp.run_on_main(lambda: read_score(path, key))
    if cached is not None:
        return cached, True
    result = evaluate(teacher, data.test, device, precision, dist=dist)
    if dist.is_main:
        write_score(path, key, result)
    return result["top1"], False


__all__ = ["teacher_test_top1", "score_key", "score_path", "read_score", "write_score", "score_dir"]
