"""The standard strategy: every layer of the student learns from the same loss,

    L = ce_weight * CE(z_S, y) + sum_k L_k(S, T)

(plain supervised training when there is no teacher / no loss). The forward passes (student, teacher,
distiller) are one module call (:class:`~adakd.strategies.parallel.LossForward`), so that under torchrun
the step trains through torch's ``DistributedDataParallel`` (gradients averaged during the backward)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..data import Batch
from ..runtime.device import autocast
from ..losses.base import DistillContext
from ..registry import STRATEGIES
from .base import Phase, Strategy, correct_count
from .parallel import DataParallelForward, LossForward, has_trainable


@STRATEGIES.register("standard", description="Plain KD: CE + the distillation losses, back-propagated through the whole student",
                     paper="Hinton et al. 2015 (the common recipe of every KD code base)")
class StandardStrategy(Strategy):
    name = "standard"
    supports_fp16 = True  # every step through backward_and_step, DDP-averaged (phases: pretrain, train)

    def compute_loss(self, batch: Batch, ctx: DistillContext) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        t = self.teacher_features(batch.x)
        with autocast(self.ctx.device, self.ctx.precision):
            s = self.student.forward_features(batch.x)
            terms = {"ce": self.ctx.ce_weight * self.ce(s.logits, batch.y)}
            if self.distiller is not None and t is not None:
                terms.update(self.distiller(s, t, ctx))
        loss = sum(terms.values())
        return loss, terms, s.logits

    @property
    def train_forward(self) -> DataParallelForward:
        """``compute_loss`` as one module call over the student and the distiller (DDP-trained under torchrun;
        a distiller with parameters, e.g. connectors, may leave some without a gradient in a step)."""
        if getattr(self, "_train_forward", None) is None:
            self._train_forward = DataParallelForward(LossForward(self.compute_loss, self.trainable_modules()),
                                                      find_unused_parameters=has_trainable(self.distiller))
        return self._train_forward

    def phases(self) -> list[Phase]:
        out = super().phases()
        out[-1].forward = self.train_forward
        return out

    def train_step(self, batch: Batch, ctx: DistillContext, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
        loss, terms, logits = self.train_forward(batch, ctx)
        self.backward_and_step(optimizer, loss)
        out = {k: v.detach().float() for k, v in terms.items()}
        out["loss"] = loss.detach().float()
        out["correct"] = correct_count(logits, batch.y)
        return out
