"""The distiller (loss) interface.

A distiller is an ``nn.Module`` built from the two models' feature shapes. It
owns its connectors (regressors, embeddings, memory banks), and returns a dict
of named, already-weighted loss terms:

    loss = Distiller(student_shapes, teacher_shapes, weight=..., **options)
    terms = loss(student_features, teacher_features, ctx)   # {"kd": tensor, ...}

For SAKD it also says where it distils (``spot_kind``) and can compute the loss
at one spot on a subset of the batch (``spot_loss``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from ..models.contract import Features, FeatureShapes

#: Where a distiller reads the features (SAKD's spots, docs/methods.md section 3).
SPOT_KINDS = ("logits", "stages", "mid", "pooled", "last", "all")


@dataclass
class DistillContext:
    """Per-step information a loss may need besides the features."""

    labels: Tensor  # [B] int64 class labels
    indices: Tensor | None = None  # [B] dataset indices of the samples (CRD's memory bank)
    epoch: int = 0  # 0-based epoch being trained
    step: int = 0  # global optimisation step
    epochs_total: int = 1
    progress: float = 0.0  # fractional epochs done (epoch + i / steps_per_epoch); warm-ups read this

    def subset(self, index: Tensor) -> "DistillContext":
        return DistillContext(
            labels=self.labels[index],
            indices=None if self.indices is None else self.indices[index],
            epoch=self.epoch,
            step=self.step,
            epochs_total=self.epochs_total,
            progress=self.progress,
        )


class Distiller(nn.Module):
    """Base class of every distillation loss.

    Class attributes:
      name, description, paper: for the registry and ``adakd list distillers``.
      default_weight: the field's usual weight of the loss (docs/recipes.md).
      spot_kind: one of SPOT_KINDS (where SAKD may route this loss).
      needs_indices: True when ``ctx.indices`` is required (CRD); the builder then
        passes ``num_samples=`` (training-set size) to the constructor.
      needs_models: True when the constructor needs ``student_model=`` and
        ``teacher_model=`` (ContractModel) besides the shapes (e.g. OFD's teacher BN margins).
      pretrain_epochs: >0 when the method pre-trains its connectors first (FT, AB, FSP).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    default_weight: ClassVar[float] = 1.0
    spot_kind: ClassVar[str] = "logits"
    needs_indices: ClassVar[bool] = False
    needs_models: ClassVar[bool] = False
    pretrain_epochs: ClassVar[int] = 0
    #: SAKD's policy-loss scale gamma when SAKD wraps this loss (the SAKD code's: 2 for AT, RKD, VID).
    sakd_policy_gamma: ClassVar[float] = 1.0
    #: What the loss reads from the teacher's Features when that is only {"logits"} and/or {"pooled"}: then a
    #: teacher-output cache can stand in for the teacher (engine/teacher_cache.py). None: feature maps / the
    #: teacher model itself, always the live teacher.
    teacher_outputs: ClassVar[frozenset[str] | None] = None

    #: Constructor arguments the builder supplies itself; never config options.
    BUILT_IN: ClassVar[frozenset[str]] = frozenset({"student", "teacher", "num_samples", "student_model",
                                                     "teacher_model"})

    @classmethod
    def options_model(cls) -> type[BaseModel]:
        """The typed config options of this loss: its constructor's keyword parameters (``weight`` first)."""
        from ..options import options_model

        return options_model(cls.__init__, cls.BUILT_IN, cls.name)

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None) -> None:
        super().__init__()
        self.student_shapes = student
        self.teacher_shapes = teacher
        self.weight = float(self.default_weight if weight is None else weight)

    # -- the loss --------------------------------------------------------------
    def forward(self, s: Features, t: Features, ctx: DistillContext) -> dict[str, Tensor]:
        """Named, weighted loss terms on the whole batch. Default: the sum of the spot losses."""
        total = sum(
            self.spot_loss(i, sf, tf, ctx)
            for i, (sf, tf) in enumerate(zip(self.spot_features(s), self.spot_features(t, teacher=True)))
        )
        return {self.name: total}

    # -- spots (SAKD) ------------------------------------------------------------
    def spot_features(self, f: Features, teacher: bool = False) -> list[Tensor]:
        """The features this loss reads, one tensor per spot."""
        if self.spot_kind == "logits":
            return [f.logits]
        if self.spot_kind == "pooled":
            return [f.pooled]
        if self.spot_kind == "last":
            return [f.stages[-1]]
        if self.spot_kind == "mid":
            return [f.stages[len(f.stages) // 2]]
        if self.spot_kind == "stages":
            return list(f.stages[1:])
        raise NotImplementedError(f"{type(self).__name__} does not decompose into spots")

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        """Weighted loss at spot ``i`` for the (possibly subset) batch behind ``s``, ``t``, ``ctx``."""
        raise NotImplementedError(f"{type(self).__name__} does not decompose into spots")

    # -- optional pre-training stage (FT, AB, FSP) --------------------------------
    def pretrain_loss(self, s: Features, t: Features, ctx: DistillContext) -> Tensor:
        """Loss of the connector pre-training stage (run for ``pretrain_epochs`` before distillation)."""
        raise NotImplementedError(f"{type(self).__name__} has no pre-training stage")

    def pretrain_modules(self, student: nn.Module) -> list[nn.Module]:
        """Modules whose parameters the pre-training stage trains (default: this loss's own)."""
        return [self]

    # -- per-epoch hook (warm-ups are computed from ctx.progress; this is for state) --
    def on_epoch_start(self, epoch: int) -> None:
        """Called by the engine at the start of each distillation epoch."""

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


class CompositeDistiller(Distiller):
    """Several distillers summed: e.g. CRD + KD, from config alone. Terms keep their names."""

    name = "composite"

    def __init__(self, parts: dict[str, Distiller]) -> None:
        first = next(iter(parts.values()))
        super().__init__(first.student_shapes, first.teacher_shapes, weight=1.0)
        self.parts = nn.ModuleDict(parts)

    @property
    def needs_indices(self) -> bool:  # type: ignore[override]
        return any(p.needs_indices for p in self.parts.values())

    @property
    def pretrain_epochs(self) -> int:  # type: ignore[override]
        """The longest pre-training stage of the parts (all parts with one pre-train together)."""
        return max((int(getattr(p, "pretrain_epochs", 0)) for p in self.parts.values()), default=0)

    def _pretraining_parts(self) -> list[Distiller]:
        return [p for p in self.parts.values() if int(getattr(p, "pretrain_epochs", 0)) > 0]

    def pretrain_loss(self, s: Features, t: Features, ctx: DistillContext) -> Tensor:
        return sum(p.pretrain_loss(s, t, ctx) for p in self._pretraining_parts())

    def pretrain_modules(self, student: nn.Module) -> list[nn.Module]:
        return [m for p in self._pretraining_parts() for m in p.pretrain_modules(student)]

    def on_epoch_start(self, epoch: int) -> None:
        for part in self.parts.values():
            part.on_epoch_start(epoch)

    def forward(self, s: Features, t: Features, ctx: DistillContext) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        for key, part in self.parts.items():
            for name, value in part(s, t, ctx).items():
                terms[name if name not in terms else f"{key}.{name}"] = value
        return terms


def register_distiller(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: add ``cls`` to the DISTILLERS registry under ``cls.name``."""
    from ..registry import DISTILLERS

    DISTILLERS.register(cls.name, description=cls.description, paper=cls.paper,
                        spot_kind=cls.spot_kind, default_weight=cls.default_weight)(cls)
    return cls


#: How a loss's linear warm-up advances (its ``warmup_advance`` option):
#:   "step":  every step, by the fractional epochs done (``ctx.progress``; 0 at the very first step);
#:   "epoch": once per epoch, counting the epoch being trained (``ctx.epoch + 1``): mdistiller's
#:            ``min(epoch / warmup, 1)`` with epochs counted from 1, i.e. 1 / warmup all through the first epoch.
WARMUP_ADVANCES = ("step", "epoch")


def warmup_done(ctx: DistillContext, advance: str = "step") -> float:
    """The epochs a warm-up counts as done at this step (see :data:`WARMUP_ADVANCES`)."""
    return float(ctx.epoch + 1) if advance == "epoch" else float(ctx.progress)


def warmup_scale(done: float, warmup_epochs: float) -> float:
    """A linear warm-up's factor min(done / warmup_epochs, 1); 1 when warmup_epochs is 0."""
    if warmup_epochs <= 0:
        return 1.0
    return float(min(max(done, 0.0) / warmup_epochs, 1.0))


def zero_like(t: Tensor) -> Tensor:
    return torch.zeros((), device=t.device, dtype=torch.float32)
