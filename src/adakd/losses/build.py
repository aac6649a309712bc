"""Build the distiller of a run from its ``losses:`` config (one loss, or several summed)."""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError, ShapeError
from ..models.contract import ContractModel
from ..options import check_options
from ..registry import DISTILLERS
from .base import CompositeDistiller, Distiller


def check_loss_options(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """The options given for loss ``name``, type-checked (ConfigError naming ``losses.NAME.KEY`` and the fix)."""
    cls = DISTILLERS.get(name).factory
    given = dict(options or {})
    checked = check_options(cls.options_model(), given, f"losses.{name}")
    return {key: getattr(checked, key) for key in given}


def build_one(name: str, options: dict[str, Any], student: ContractModel, teacher: ContractModel,
              *, num_samples: int | None = None) -> Distiller:
    cls = DISTILLERS.get(name).factory
    options = check_loss_options(name, options)
    extra: dict[str, Any] = {}
    if getattr(cls, "needs_indices", False):
        if num_samples is None:
            raise ConfigError(f"loss {name!r} needs the training-set size (num_samples).")
        extra["num_samples"] = num_samples
    if getattr(cls, "needs_models", False):
        extra["student_model"] = student
        extra["teacher_model"] = teacher
    try:
        s_shapes = student.feature_shapes()
        t_shapes = teacher.feature_shapes()
        return cls(s_shapes, t_shapes, **options, **extra)
    except (ShapeError, ConfigError):
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss {name!r}: {exc}. Check its options in the config.") from None


def build_distiller(losses: dict[str, dict[str, Any]], student: ContractModel, teacher: ContractModel | None,
                    *, num_samples: int | None = None) -> Distiller | None:
    """None when there is no loss; one distiller; or a CompositeDistiller summing several."""
    if not losses:
        return None
    if teacher is None:
        raise ConfigError("distillation losses need a teacher: add a `teacher:` section.")
    parts = {name: build_one(name, opts, student, teacher, num_samples=num_samples) for name, opts in losses.items()}
    if len(parts) == 1:
        return next(iter(parts.values()))
    return CompositeDistiller(parts)
