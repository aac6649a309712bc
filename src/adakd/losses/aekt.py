"""AEKT: Adaptive Explicit Knowledge Transfer (Park and Lee, "Adaptive Explicit Knowledge
Transfer for Knowledge Distillation").

RECONSTRUCTION. Only the paper's abstract and figure captions were available; the
formulas below are our reading of them (docs/methods.md section 2), not the paper's
equations.

What the captions fix: the distillation is DKD's TCKD + NCKD plus a loss L_AEKT that
transfers the teacher's confidence in the target class p_t^T ("explicit knowledge")
with an adaptive weight from the ratio p_t^T / p_t^S, whose gradient on the student's
target logit carries a (1 - p_t^S) factor (Fig. B.1 ablates that factor); and a
"task-serialization" C x C fully connected layer on top of the student's logits: the
cross-entropy with the labels is taken on the raw student logits (by the strategy),
the three distillation losses on the layer's output. The layer lives in this
distiller, so it is trained with the student's optimiser and is never part of the
exported student; its weights show inter-class relations (Fig. 3, 4).

Our formulas, with p = softmax(z / tau), t the label, z^S' = W z^S + b the serialized
student logits (W = I, b = 0 at init, so training starts as DKD):

    w      = stopgrad(min(p_t^T / p_t^S', w_max))
    L_AEKT = -tau^2 * mean_batch(w * log p_t^S')
    dL_AEKT / dz'_t = -tau * w * (1 - p_t^S') / B     (the (1 - p_t^S) factor)
    ablation (drop_gradient_factor): L_AEKT / stopgrad(max(1 - p_t^S', eps)),
        whose target-logit gradient is -tau * w / B
    L = min(progress / warmup_epochs, 1) * (alpha * TCKD + beta * NCKD + aekt_weight * L_AEKT)

DKD's linear warm-up scales all three terms (our choice; the captions are silent).
Defaults: tau = 4, alpha = 1, beta = 8 (use DKD's per-pair betas), aekt_weight = 1,
w_max = 10, warm-up 20 epochs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.contract import Features, FeatureShapes
from .base import DistillContext, Distiller, register_distiller
from ..runtime.device import at_least_float32
from .dkd import check_dkd_options, check_logit_shapes, nckd_loss, target_log_probs, tckd_loss, warmup_scale

#: Floor of stopgrad(1 - p_t^S) in the drop_gradient_factor ablation.
GRADIENT_FACTOR_EPS = 1e-6


def aekt_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float,
              w_max: float, drop_gradient_factor: bool = False) -> Tensor:
    """-tau^2 * mean_batch(w * log p_t^S), w = stopgrad(min(p_t^T / p_t^S, w_max)) (unweighted L_AEKT).

    With ``drop_gradient_factor`` each sample's term is divided by stopgrad(max(1 - p_t^S, eps)).
    """
    log_p_s, log_not_s = target_log_probs(student_logits, labels, temperature)
    log_p_t, _ = target_log_probs(teacher_logits, labels, temperature)
    # ratio in log space: finite even when p_t^S underflows to 0
    log_w = torch.clamp(log_p_t.detach() - log_p_s.detach(), max=math.log(w_max))
    per_sample = log_w.exp() * log_p_s
    if drop_gradient_factor:
        per_sample = per_sample / log_not_s.detach().exp().clamp(min=GRADIENT_FACTOR_EPS)
    return -(temperature**2) * per_sample.mean()


@register_distiller
class AEKT(Distiller):
    """AEKT (reconstruction): warm-up * (alpha TCKD + beta NCKD + aekt_weight L_AEKT) on serialized logits.

    Park and Lee, "Adaptive Explicit Knowledge Transfer for Knowledge Distillation"
    (reconstructed from the abstract and captions; see the module docstring).
    L_AEKT = -tau^2 mean_batch(w log p_t^S), w = stopgrad(min(p_t^T / p_t^S, w_max)), all
    on the student logits after the identity-initialised task-serialization layer
    nn.Linear(C, C) (``serialize=False``: no layer). Terms "tckd", "nckd", "aekt"
    (the enabled ones; ``use_tckd``/``use_nckd``/``use_aekt`` switch them for ablations).
    """

    name = "aekt"
    description = ("AEKT (reconstruction): DKD + adaptive target-confidence loss on logits passed "
                   "through a C x C task-serialization layer")
    paper = "Park and Lee, Adaptive Explicit Knowledge Transfer for Knowledge Distillation (reconstruction)"
    default_weight = 1.0
    spot_kind = "logits"
    teacher_outputs = frozenset({"logits"})  # cacheable (engine/teacher_cache.py)

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0, aekt_weight: float = 1.0,
                 w_max: float = 10.0, warmup_epochs: float = 20.0, serialize: bool = True,
                 use_tckd: bool = True, use_nckd: bool = True, use_aekt: bool = True,
                 drop_gradient_factor: bool = False, serializer_lr_scale: float = 0.01) -> None:
        super().__init__(student, teacher, weight)
        num_classes = check_logit_shapes(self.name, student, teacher)
        check_dkd_options(self.name, temperature, alpha, beta, warmup_epochs)
        if aekt_weight < 0:
            raise ConfigError(f"aekt: aekt_weight must be >= 0 (got {aekt_weight}); default 1.")
        if w_max <= 0:
            raise ConfigError(f"aekt: w_max must be > 0 (got {w_max}); default 10.")
        if not (use_tckd or use_nckd or use_aekt):
            raise ConfigError("aekt: use_tckd, use_nckd and use_aekt are all false; enable at least one.")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.aekt_weight = float(aekt_weight)
        self.w_max = float(w_max)
        self.warmup_epochs = float(warmup_epochs)
        self.use_tckd, self.use_nckd, self.use_aekt = bool(use_tckd), bool(use_nckd), bool(use_aekt)
        self.drop_gradient_factor = bool(drop_gradient_factor)
        self.serializer: nn.Linear | None = None
        if serialize:
            self.serializer = nn.Linear(num_classes, num_classes)
            with torch.no_grad():
                self.serializer.weight.copy_(torch.eye(num_classes))
                self.serializer.bias.zero_()
            # The layer sees raw logits (|z| ~ 10) under T^2-scaled losses, so its gradients are ~100x the
            # student's: at the student's lr it diverges within a few steps. It learns at a fraction of the
            # lr, without weight decay (decay would pull it to 0, not to its identity start).
            if serializer_lr_scale <= 0:
                raise ConfigError(f"aekt: serializer_lr_scale must be > 0 (got {serializer_lr_scale}); default 0.01.")
            for param in self.serializer.parameters():
                setattr(param, "adakd_lr_scale", float(serializer_lr_scale))
                setattr(param, "adakd_no_weight_decay", True)

    # -- the task-serialization layer ------------------------------------------------
    def serialized_logits(self, logits: Tensor) -> Tensor:
        """W z + b in float32 (float64 kept), outside autocast; identity when ``serialize=False``."""
        z = at_least_float32(logits)
        if self.serializer is None:
            return z
        with torch.autocast(device_type=z.device.type, enabled=False):
            weight = self.serializer.weight.to(z.dtype)
            bias = self.serializer.bias.to(z.dtype)
            return F.linear(z, weight, bias)

    def class_relations(self) -> Tensor:
        """The layer's C x C weight (row i: how serialized class i draws on each student logit j)."""
        if self.serializer is None:
            raise ConfigError("aekt was built with serialize=False: there is no serialization layer "
                              "whose class relations could be read; train with serialize: true.")
        return self.serializer.weight.detach().clone()

    def top_related(self, class_index: int, k: int = 20, include_self: bool = False) -> tuple[Tensor, Tensor]:
        """(class indices, weights) of row ``class_index``'s k largest |w_ij|, largest first (paper Fig. 4)."""
        weight = self.class_relations()
        num_classes = weight.shape[0]
        if not 0 <= class_index < num_classes:
            raise ConfigError(f"aekt.top_related: class_index {class_index} is out of range [0, {num_classes}).")
        if k < 1:
            raise ConfigError(f"aekt.top_related: k must be >= 1 (got {k}).")
        row = weight[class_index]
        candidates = torch.arange(num_classes, device=row.device)
        if not include_self:
            candidates = candidates[candidates != class_index]
        order = row[candidates].abs().argsort(descending=True, stable=True)[:k]
        index = candidates[order]
        return index, row[index]

    # -- the loss ------------------------------------------------------------------------
    def terms(self, s: Tensor, t: Tensor, ctx: DistillContext) -> dict[str, Tensor]:
        """The enabled terms among {"tckd", "nckd", "aekt"}, weighted and warmed up."""
        z = self.serialized_logits(s)
        names = [n for n, on in (("tckd", self.use_tckd), ("nckd", self.use_nckd), ("aekt", self.use_aekt)) if on]
        if z.shape[0] == 0:
            zero = z.sum() * 0.0
            return {n: zero for n in names}
        scale = self.weight * warmup_scale(ctx.progress, self.warmup_epochs)
        temp, labels = self.temperature, ctx.labels
        out: dict[str, Tensor] = {}
        if self.use_tckd:
            out["tckd"] = scale * self.alpha * tckd_loss(z, t, labels, temp)
        if self.use_nckd:
            out["nckd"] = scale * self.beta * nckd_loss(z, t, labels, temp)
        if self.use_aekt:
            out["aekt"] = scale * self.aekt_weight * aekt_loss(z, t, labels, temp, self.w_max,
                                                               self.drop_gradient_factor)
        return out

    def forward(self, s: Features, t: Features, ctx: DistillContext) -> dict[str, Tensor]:
        return self.terms(s.logits, t.logits, ctx)

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        return sum(self.terms(s, t, ctx).values())  # type: ignore[return-value]

    def extra_repr(self) -> str:
        on = "+".join(n for n, f in (("tckd", self.use_tckd), ("nckd", self.use_nckd), ("aekt", self.use_aekt)) if f)
        return (f"weight={self.weight}, T={self.temperature}, alpha={self.alpha}, beta={self.beta}, "
                f"aekt_weight={self.aekt_weight}, w_max={self.w_max}, warmup_epochs={self.warmup_epochs}, "
                f"terms={on}, serialize={self.serializer is not None}, "
                f"drop_gradient_factor={self.drop_gradient_factor}")
