"""Decoupled Knowledge Distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

KD's KL splits into a target-class part and a non-target part. With
p = softmax(z / T), target class t, b = [p_t, 1 - p_t] (binary) and
p^ = softmax over the non-target logits only (C - 1 classes):

    TCKD = T^2 * mean_batch KL(b^T || b^S)
    NCKD = T^2 * mean_batch KL(p^T || p^S)
    L_DKD = min(done / warmup_epochs, 1) * (alpha * TCKD + beta * NCKD)

Defaults (CIFAR-100, the paper and mdistiller): T = 4, alpha = 1, beta = 8, 20 warm-up epochs.
``done`` advances every step (``warmup_advance: step``, fractional epochs: 0 at the first step) or, as in
mdistiller, once per epoch (``warmup_advance: epoch``: epochs counted from 1, so 1/20 in the first epoch);
see ``losses/base.py`` WARMUP_ADVANCES.

Numerics (everything in float32 or wider, also under bf16 autocast): log p_t and
log(1 - p_t) come from log-sum-exps over all / the non-target logits, and NCKD's
distribution is a log-softmax over the C - 1 non-target logits gathered out of the
row (no masking constant). So extreme logits give finite losses, and with C = 2 the
non-target distribution has one class and NCKD is exactly 0. (mdistiller's
``log(softmax)`` makes TCKD inf once a probability underflows, and its "- 1000" mask
lets the target class back into NCKD when logits / T differ by more than 1000: with
two classes and 1e4 logit gaps it returns NCKD in the tens of thousands instead of 0.)

The functions here (``tckd_loss``, ``nckd_loss``, ``target_log_probs``, ``warmup_scale``)
are shared with AEKT (aekt.py).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..models.contract import Features, FeatureShapes
from ..runtime.device import at_least_float32
from .base import WARMUP_ADVANCES, DistillContext, Distiller, register_distiller, warmup_done, warmup_scale


def non_target_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """The [B, C - 1] logits of the non-target classes, order kept (a gather: no host sync)."""
    b, c = logits.shape
    index = torch.arange(c - 1, device=logits.device).expand(b, c - 1)
    index = index + (index >= labels.view(-1, 1).to(index.device)).long()
    return logits.gather(1, index)


def target_log_probs(logits: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(log p_t, log(1 - p_t)) per row for p = softmax(logits / T); stable for any logits."""
    z = at_least_float32(logits) / temperature
    lse_all = torch.logsumexp(z, dim=1)
    log_p_t = z.gather(1, labels.view(-1, 1).long()).squeeze(1) - lse_all
    log_not_t = torch.logsumexp(non_target_logits(z, labels), dim=1) - lse_all
    return log_p_t, log_not_t


def tckd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """T^2 * mean over the batch of KL([p_t^T, 1 - p_t^T] || [p_t^S, 1 - p_t^S]) (unweighted TCKD)."""
    s_t, s_not = target_log_probs(student_logits, labels, temperature)
    t_t, t_not = target_log_probs(teacher_logits, labels, temperature)
    kl = t_t.exp() * (t_t - s_t) + t_not.exp() * (t_not - s_not)
    return kl.mean() * temperature**2


def nckd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """T^2 * mean over the batch of KL(p^T || p^S) over the C - 1 non-target classes (unweighted NCKD)."""
    log_q_s = F.log_softmax(non_target_logits(at_least_float32(student_logits), labels) / temperature, dim=1)
    log_q_t = F.log_softmax(non_target_logits(at_least_float32(teacher_logits), labels) / temperature, dim=1)
    kl = (log_q_t.exp() * (log_q_t - log_q_s)).sum(dim=1)
    return kl.mean() * temperature**2


def check_logit_shapes(name: str, student: FeatureShapes, teacher: FeatureShapes) -> int:
    """The class count C shared by student and teacher; ShapeError when they differ or C < 2."""
    c_s, c_t = student.num_classes, teacher.num_classes
    if c_s != c_t:
        raise ShapeError(f"{name}: student has {c_s} classes and teacher {c_t}; "
                         "logit distillation needs the same classes: build both models with the same num_classes.")
    if c_s < 2:
        raise ShapeError(f"{name}: needs at least 2 classes (got {c_s}).")
    return c_s


def check_dkd_options(name: str, temperature: float, alpha: float, beta: float, warmup_epochs: float) -> None:
    if temperature <= 0:
        raise ConfigError(f"{name}: temperature must be > 0 (got {temperature}); DKD uses 4 on CIFAR, 1 on ImageNet.")
    if alpha < 0 or beta < 0:
        raise ConfigError(f"{name}: alpha and beta must be >= 0 (got alpha={alpha}, beta={beta}); defaults 1 and 8.")
    if warmup_epochs < 0:
        raise ConfigError(f"{name}: warmup_epochs must be >= 0 (got {warmup_epochs}); 0 disables the warm-up.")


def check_warmup_advance(name: str, advance: str) -> str:
    if advance not in WARMUP_ADVANCES:
        raise ConfigError(f"{name}: warmup_advance={advance!r}: choose 'step' (ours: every step) or 'epoch' "
                          "(mdistiller's: once per epoch, 1/warmup in the first epoch).")
    return advance


@register_distiller
class DKD(Distiller):
    """Decoupled KD: min(progress / warmup, 1) * (alpha * TCKD + beta * NCKD) at temperature T.

    Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022.
    TCKD = T^2 KL(b^T || b^S) on the binary [p_t, 1 - p_t]; NCKD = T^2 KL over the
    non-target classes. Defaults T = 4, alpha = 1, beta = 8, warm-up 20 epochs advanced every step
    (``ctx.progress``; ``warmup_advance="epoch"``: once per epoch, as mdistiller). Terms: "tckd", "nckd"
    (weighted, warmed up).
    """

    name = "dkd"
    description = "Decoupled KD: target-class (TCKD) and non-target-class (NCKD) KL, separately weighted"
    paper = "Zhao et al., Decoupled Knowledge Distillation, CVPR 2022"
    default_weight = 1.0
    spot_kind = "logits"
    teacher_outputs = frozenset({"logits"})  # cacheable (engine/teacher_cache.py)

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup_epochs: float = 20.0, warmup_advance: Literal["step", "epoch"] = "step") -> None:
        super().__init__(student, teacher, weight)
        check_logit_shapes(self.name, student, teacher)
        check_dkd_options(self.name, temperature, alpha, beta, warmup_epochs)
        self.warmup_advance = check_warmup_advance(self.name, warmup_advance)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.temperature = float(temperature)
        self.warmup_epochs = float(warmup_epochs)

    def terms(self, s: Tensor, t: Tensor, ctx: DistillContext) -> dict[str, Tensor]:
        """{"tckd", "nckd"}: weighted and warmed-up terms for logits ``s``, ``t``."""
        if s.shape[0] == 0:
            zero = at_least_float32(s).sum() * 0.0
            return {"tckd": zero, "nckd": zero}
        scale = self.weight * warmup_scale(warmup_done(ctx, self.warmup_advance), self.warmup_epochs)
        return {
            "tckd": scale * self.alpha * tckd_loss(s, t, ctx.labels, self.temperature),
            "nckd": scale * self.beta * nckd_loss(s, t, ctx.labels, self.temperature),
        }

    def forward(self, s: Features, t: Features, ctx: DistillContext) -> dict[str, Tensor]:
        return self.terms(s.logits, t.logits, ctx)

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        terms = self.terms(s, t, ctx)
        return terms["tckd"] + terms["nckd"]

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, alpha={self.alpha}, beta={self.beta}, T={self.temperature}, "
                f"warmup_epochs={self.warmup_epochs}, warmup_advance={self.warmup_advance}")
