"""Getting the frozen teacher: load a checkpoint (or the published one), or train a recipe once and cache it.

Recipes are cached by a hash of their resolved config under ``$ADAKD_CACHE/teachers``
(default ``~/.cache/adakd/teachers``); a file lock lets parallel runs share one
training; a killed teacher training resumes on the next call.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..config import PUBLISHED_TEACHER, RunConfig, TeacherConfig, load_raw, validate
from ..data import DatasetInfo
from ..errors import ConfigError
from ..models import build_model
from ..models.contract import ContractModel
from ..runtime.cache_home import cache_home
from .checkpoint import load_model_weights
from .published_teachers import existing_published_path, published_path

#: Config keys that do not change the trained teacher's weights.
_RUNTIME_KEYS = ("name", "output_dir", "run_dir", "resume", "progress", "device", "compare_scratch")


def cache_root() -> Path:
    return cache_home() / "teachers"


def recipe_config(teacher: TeacherConfig, parent: RunConfig) -> RunConfig:
    """The recipe's run config, with the parent run's data root, device and progress carried over."""
    assert teacher.recipe is not None
    raw = load_raw(teacher.recipe)
    raw.setdefault("data", {})
    if parent.data.root and not raw["data"].get("root"):
        raw["data"]["root"] = parent.data.root
    raw["device"] = parent.device
    raw["progress"] = parent.progress
    cfg = validate(raw, teacher.recipe)
    if cfg.teacher is not None or cfg.losses:
        raise ConfigError(f"teacher recipe {teacher.recipe} must be a plain training config (no teacher, no losses).")
    if cfg.student.name != teacher.name or cfg.student.kwargs != teacher.kwargs:
        raise ConfigError(
            f"teacher recipe {teacher.recipe} trains {cfg.student.name} {cfg.student.kwargs or ''}, but the config's "
            f"teacher is {teacher.name} {teacher.kwargs or ''}: make teacher.name/kwargs match the recipe's student."
        )
    return cfg


def recipe_key(cfg: RunConfig) -> str:
    """Name + hash of what the recipe sets explicitly (defaults left out, so a new config field does not
    invalidate every cached teacher), without runtime-only keys (where data lives, device, compile)."""
    payload = cfg.model_dump(mode="json", exclude_defaults=True)
    for key in _RUNTIME_KEYS:
        payload.pop(key, None)
    payload.get("data", {}).pop("root", None)
    for key in ("compile", "compile_mode"):
        payload.get("train", {}).pop(key, None)
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    return path_safe(f"{cfg.name}-{cfg.student.name}-{digest}")


def path_safe(name: str) -> str:
    """``name`` as one directory name on every OS: characters other than letters, digits and ``. _ + -``
    (``tv:resnet18``'s colon is not allowed on Windows) become ``-``."""
    return re.sub(r"[^A-Za-z0-9._+-]", "-", name)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def teacher_checkpoint_path(teacher: TeacherConfig, parent: RunConfig,
                            train: Callable[[RunConfig], object], log: Callable[[str], None]) -> Path:
    """A checkpoint for the teacher: the given one, the published one, or the cached recipe run (trained now
    if missing; also when the published file is absent and a recipe is given as its fallback)."""
    if teacher.checkpoint == PUBLISHED_TEACHER:
        published = published_teacher_file(teacher, parent, log)
        if published is not None:
            return published
    elif teacher.checkpoint:
        return Path(teacher.checkpoint).expanduser()
    cfg = recipe_config(teacher, parent)
    run_dir = cache_root() / recipe_key(cfg)
    done = run_dir / "checkpoints" / "student.pt"
    with file_lock(run_dir.with_suffix(".lock")):
        if not done.exists():
            log(f"training teacher {cfg.student.name} from recipe {teacher.recipe} (cached in {run_dir})")
            cfg = cfg.model_copy(update={"run_dir": str(run_dir), "resume": True})
            train(cfg)
        else:
            log(f"using cached teacher {run_dir}")
    return done


def published_teacher_file(teacher: TeacherConfig, parent: RunConfig, log: Callable[[str], None]) -> Path | None:
    """``teacher.checkpoint: published``: the released file; None when it is absent and ``teacher.recipe`` is
    the fallback (logged); else one error naming the path expected and `adakd teachers fetch`."""
    dataset = parent.data.name
    if teacher.recipe is None:
        path = existing_published_path(teacher.name, dataset)
    else:
        path = published_path(teacher.name, dataset)
        if not path.is_file():
            log(f"published teacher {teacher.name} not found at {path}: training it from recipe {teacher.recipe} "
                f"instead (`adakd teachers fetch {dataset}` gets the published one)")
            return None
    log(f"using the published teacher {path}")
    return path


def load_teacher(teacher: TeacherConfig, info: DatasetInfo, device: torch.device, checkpoint: Path) -> ContractModel:
    """Build the teacher architecture, load its weights, freeze it (eval mode, no grads)."""
    model = build_model(teacher.name, num_classes=info.num_classes, in_channels=info.in_channels,
                        image_size=info.image_size, **teacher.kwargs)
    load_model_weights(model, checkpoint, teacher.format, f"teacher checkpoint {checkpoint}")
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
