"""The strategy interface: HOW the student learns (one optimisation step, and its phases).

The trainer knows nothing of any method. It asks the strategy for
``trainable_modules()`` (what the main optimiser updates), then calls
``train_step(batch, ctx, optimizer)`` once per mini-batch; the strategy runs the
forward passes, the losses, the backward and the optimiser step, and returns the
named loss terms as detached device tensors (no host sync).
Adaptive strategies (SAKD, ABL) keep their own state (policy, meta variables,
extra optimisers) in ``state_dict()`` so that a resumed run continues exactly,
and may add phases before the main schedule (ABL's search).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Batch
from ..errors import ConfigError
from ..runtime.device import autocast
from ..runtime.distributed import all_finite
from ..losses.base import DistillContext, Distiller
from ..models.contract import ContractModel, Features
from ..options import StrictOptions, check_options
from .parallel import DataParallelForward, LossForward


@dataclass
class Phase:
    """One stretch of training with its own optimiser and schedule.

    The default run has one phase, "train" (the config's schedule). A distiller with
    a connector pre-training stage (FT, AB, FSP) adds "pretrain" before it; ABL adds
    its "search" phase. ``on_start`` runs once when the phase begins (not on resume).
    """

    name: str
    epochs: int
    modules: list[nn.Module]
    step: Callable[..., dict[str, Tensor]]
    model: nn.Module  # evaluated on the test split at epoch ends
    on_start: Callable[[], None] | None = None
    evaluate: bool = True
    #: "config" = the run's schedule; "constant" = fixed lr.
    schedule: str = "config"
    #: The step's forward passes as one module call, which the trainer wraps in DistributedDataParallel under
    #: torchrun; None: the step averages its gradients explicitly (``runtime.distributed.sync_gradients``).
    forward: "DataParallelForward | None" = None


@dataclass
class StrategyContext:
    """What a strategy is built with."""

    student: ContractModel
    teacher: ContractModel | None
    distiller: Distiller | None
    ce_weight: float
    device: torch.device
    precision: str
    num_classes: int
    options: dict[str, Any] = field(default_factory=dict)
    #: Skip (instead of taking) optimiser steps whose loss is NaN/inf.
    skip_nonfinite: bool = False
    #: Epochs of the main schedule (config train.epochs).
    epochs: int = 1
    #: Held-out validation loader (data.val_fraction > 0), e.g. for ABL's bilevel search; never the test set.
    val_loader: Any = None
    #: Test loader, for end-of-training analyses only (e.g. accuracy of ABL's auxiliary heads).
    test_loader: Any = None
    #: The run directory, for extra records (e.g. per-iteration traces) next to metrics.jsonl; None where
    #: nothing may be written (ranks other than 0 of a torchrun job).
    run_dir: Any = None
    #: Steps per epoch of the training loader.
    steps_per_epoch: int = 1
    #: Seed of the run.
    seed: int = 0
    #: fp16's loss scaler (``torch.amp.GradScaler``; None in other precisions): :meth:`Strategy.backward_and_step`
    #: scales the loss and steps through it; the engine saves its state in checkpoints.
    grad_scaler: Any = None


class Strategy:
    """Base class; subclasses register with ``@STRATEGIES.register(name)``."""

    name: ClassVar[str] = ""

    #: Whether the steps scale their losses for fp16: every backward and step through :meth:`backward_and_step`,
    #: in phases trained through DistributedDataParallel (``Phase.forward``; the ranks then agree on a skip).
    #: Off unless a strategy declares it (the standard strategy): where it is off (SAKD's policy step, ABL's
    #: hypergradient: steps of their own), ``precision: fp16`` is one ConfigError naming bf16/fp32, and
    #: ``precision: auto`` never times fp16.
    supports_fp16: ClassVar[bool] = False

    def __init__(self, ctx: StrategyContext) -> None:
        if ctx.precision == "fp16" and not self.supports_fp16:
            raise ConfigError(f"strategy {self.name!r} does not support train.precision=fp16 (its own optimiser steps "
                              "are not loss-scaled): use precision=bf16 (where the device has it) or fp32.")
        self.ctx = ctx
        self.student = ctx.student
        self.teacher = ctx.teacher
        self.distiller = ctx.distiller
        #: The validated ``strategy.options`` (defaults filled in).
        self.options = self.check_options(ctx.options)

    # -- configuration -------------------------------------------------------------
    #: The strategy's typed options (``strategy.options`` in the config); subclasses declare their own.
    Options: ClassVar[type[StrictOptions]] = StrictOptions

    @classmethod
    def check_options(cls, options: dict[str, Any] | None) -> StrictOptions:
        """``options`` validated against :attr:`Options` (one ConfigError naming each bad key and the fix)."""
        return check_options(cls.Options, options, "strategy.options")

    # -- what the main optimiser trains ------------------------------------------------
    def trainable_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [self.student]
        if self.distiller is not None:
            mods.append(self.distiller)
        return mods

    # -- forward helpers -------------------------------------------------------------------
    #: Whether the step reads the teacher only through :meth:`teacher_features` (a teacher-output cache can
    #: then serve it); False where it runs the teacher's blocks itself (SAKD's grafted pass).
    uses_teacher_cache: ClassVar[bool] = True
    #: Set by the engine when ``teacher.cache`` serves this run (engine/teacher_cache.py ``TeacherFeed``).
    teacher_cache: Any = None

    def teacher_features(self, x: Tensor) -> Features | None:
        if self.teacher is None:
            return None
        if self.teacher_cache is not None:  # the cached outputs of the training batch ``x``, if it is one
            cached = self.teacher_cache.features_for(x)
            if cached is not None:
                return cached
        with torch.no_grad(), autocast(self.ctx.device, self.ctx.precision):
            return self.teacher.forward_features(x)

    def ce(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), labels)

    # -- phases and steps ----------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        """Pre-training of the distiller's connectors (if any), then the main schedule."""
        out = []
        d = self.distiller
        pre_epochs = getattr(d, "pretrain_epochs", 0) if d is not None else 0
        if d is not None and pre_epochs > 0:
            out.append(Phase("pretrain", int(pre_epochs), d.pretrain_modules(self.student), self.pretrain_step,
                             model=self.student, evaluate=False, schedule="constant", forward=self.pretrain_forward))
        out.append(Phase("train", self.ctx.epochs, self.trainable_modules(), self.train_step, model=self.student))
        return out

    def train_step(self, batch: Batch, ctx: DistillContext, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
        raise NotImplementedError

    @property
    def pretrain_forward(self) -> DataParallelForward:
        """The pre-training step's forward as one module call (DDP-trained under torchrun)."""
        if getattr(self, "_pretrain_forward", None) is None:
            assert self.distiller is not None
            self._pretrain_forward = DataParallelForward(
                LossForward(self.pretrain_loss, self.distiller.pretrain_modules(self.student)),
                find_unused_parameters=True)
        return self._pretrain_forward

    def pretrain_loss(self, batch: Batch, ctx: DistillContext) -> tuple[Tensor, Tensor]:
        """(the distiller's connector pre-training loss, the student's logits): the pre-training forward."""
        assert self.distiller is not None
        t = self.teacher_features(batch.x)
        with autocast(self.ctx.device, self.ctx.precision):
            s = self.student.forward_features(batch.x)
            loss = self.distiller.pretrain_loss(s, t, ctx)
        return loss, s.logits

    def pretrain_step(self, batch: Batch, ctx: DistillContext, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
        """One step of the distiller's connector pre-training (FT's paraphraser, AB/FSP initialisation)."""
        loss, logits = self.pretrain_forward(batch, ctx)
        self.backward_and_step(optimizer, loss)
        return {"pretrain": loss.detach().float(), "loss": loss.detach().float(), "correct": correct_count(logits, batch.y)}

    def backward_and_step(self, optimizer: torch.optim.Optimizer, loss: Tensor) -> bool:
        """zero_grad, backward, step; with ``skip_nonfinite`` a NaN/inf loss skips the step. True if stepped
        (in fp16: also when the scaler skipped the step for an inf/NaN gradient; the engine counts those).

        fp16 (``ctx.grad_scaler``): backward of S x loss, the scaler's step (gradients / S; the optimiser's step
        is not called where one is inf/NaN, or a fused optimiser skips it itself), its update. The engine
        counts such a step as skipped (:class:`~adakd.engine.nonfinite.GradGuard` sees no step, or skips the
        fused one itself: one skip, never two). Under torchrun the phases that step here average their
        gradients inside the backward (DistributedDataParallel): every rank sees the same gradients."""
        optimizer.zero_grad(set_to_none=True)
        if self.ctx.skip_nonfinite and not all_finite(loss):  # one decision for every rank of a job
            return False
        scaler = self.ctx.grad_scaler
        if scaler is None:
            loss.backward()
            optimizer.step()
            return True
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # gradients / S; no step where one is inf/NaN
        scaler.update()  # S halved after an inf/NaN, doubled after 2000 clean steps
        return True

    # -- hooks ----------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        if self.distiller is not None:
            self.distiller.on_epoch_start(epoch)

    def epoch_metrics(self) -> dict[str, Any]:
        """Extra per-epoch metrics for metrics.jsonl (e.g. SAKD routing fractions)."""
        return {}

    def end_of_training(self) -> dict[str, Any]:
        """Called once when the last phase ends; the returned items go into summary.json
        (e.g. test accuracy of auxiliary heads, per-class routing)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @classmethod
    def block_logits(cls, state: dict[str, Any], options: dict[str, Any], student: nn.Module, num_classes: int
                     ) -> Callable[[Tensor], list[Tensor]] | None:
        """For a run of this strategy (``state``: its :meth:`state_dict` from the run's ``last.pt``; ``options``:
        its ``strategy.options``): x -> the logits of each block (e.g. ABL's auxiliary heads), for the ABL
        paper's per-block logit-correlation analysis; None where the strategy has none."""
        return None

    def export_student(self) -> nn.Module:
        """The deployable student alone (no connectors, heads or policies)."""
        return self.student


def correct_count(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.detach().argmax(dim=1) == labels).sum()
