"""Logit distillation: classic KD and KD with logit standardisation.

KD (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015):
    L_KD = T^2 * mean_batch KL( softmax(z_T / T) || softmax(z_S / T) )

Logit standardisation (Sun et al., "Logit Standardization in Knowledge
Distillation", CVPR 2024): the same KL on z-scored logits,
    z~ = (z - mean(z)) / (std(z) + eps),  L = T^2 * KL(softmax(z~_T / T) || softmax(z~_S / T)),
so the student matches the teacher's logit *relations*, not their scale.
"""
from __future__ import annotations


import torch.nn.functional as F
from torch import Tensor

from ..models.contract import FeatureShapes
from .base import DistillContext, Distiller, register_distiller


def kl_div_with_temperature(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * mean over the batch of KL(softmax(t/T) || softmax(s/T)), computed in float32."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return kl.mean() * temperature**2


def standardize_logits(z: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each row: (z - mean) / (std + eps), std with the 1/C (population) normaliser."""
    z = z.float()
    mean = z.mean(dim=1, keepdim=True)
    std = z.std(dim=1, keepdim=True, unbiased=False)
    return (z - mean) / (std + eps)


@register_distiller
class KD(Distiller):
    """Hinton KD: T^2 * KL(p_T || p_S) at temperature T (default T=4, weight 0.9 with CE 0.1)."""

    name = "kd"
    description = "Classic KD: KL between temperature-softened teacher and student probabilities"
    paper = "Hinton et al., Distilling the Knowledge in a Neural Network, 2015"
    default_weight = 0.9
    spot_kind = "logits"
    teacher_outputs = frozenset({"logits"})  # cacheable (engine/teacher_cache.py)

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 temperature: float = 4.0) -> None:
        super().__init__(student, teacher, weight)
        if temperature <= 0:
            raise ValueError("kd temperature must be > 0")
        self.temperature = float(temperature)

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        return self.weight * kl_div_with_temperature(s, t, self.temperature)


@register_distiller
class LogitStandardizedKD(KD):
    """KD on z-score standardised logits (Sun et al., CVPR 2024); default T=2, weight 9 with CE 0.1.

    The weight is the paper code's ``--base-temp 2 --kd-weight 9``: z-scored logits are O(1), so the
    KL at T=2 is about ten times smaller than classic KD's and needs ten times the weight."""

    name = "ls"
    description = "KD with logit standardisation: KL between z-scored, temperature-softened logits"
    paper = "Sun et al., Logit Standardization in Knowledge Distillation, CVPR 2024"
    default_weight = 9.0

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 temperature: float = 2.0) -> None:
        super().__init__(student, teacher, weight, temperature)

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        return self.weight * kl_div_with_temperature(standardize_logits(s), standardize_logits(t), self.temperature)


