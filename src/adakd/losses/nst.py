"""Neuron selectivity transfer (Huang & Wang, 2017)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.contract import FeatureShapes
from .base import DistillContext, Distiller, register_distiller
from .connectors import paired_stage_maps, pool_to_common
from ..runtime.device import at_least_float32, autocast_off


def polynomial_kernel(a: Tensor, b: Tensor) -> Tensor:
    """k(a_i, b_j) = (a_i . b_j)^2 for rows of a [B, I, D] and b [B, J, D] -> [B, I, J]."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2)


@register_distiller
class NST(Distiller):
    """Neuron selectivity transfer: squared MMD between the channels' spatial distributions.

    Each channel's map is flattened and L2-normalised, f_i = vec(F_i) / ||vec(F_i)||; with the
    polynomial kernel k(x, y) = (x . y)^2 (d = 2, c = 0), per stage

        MMD^2 = mean_{i,i'} k(f_t,i, f_t,i') + mean_{j,j'} k(f_s,j, f_s,j') - 2 mean_{i,j} k(f_s,j, f_t,i)
        L     = weight * sum_k MMD^2_k

    Maps of different spatial sizes are adaptive-average-pooled to the smaller one; channel
    counts may differ. Default weight 50 (CRD repository). No trainable parts.

    Huang, Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", arXiv 1707.01219, 2017.
    """

    name = "nst"
    description = "Neuron selectivity transfer: polynomial-kernel MMD between channel distributions per stage"
    paper = "Huang & Wang, Like What You Like: Knowledge Distill via Neuron Selectivity Transfer, 2017"
    default_weight = 50.0
    spot_kind = "stages"

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None) -> None:
        super().__init__(student, teacher, weight)
        paired_stage_maps(student, teacher, "nst")

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        with autocast_off(s):
            s, t = pool_to_common(at_least_float32(s), at_least_float32(t.detach()))
            fs = F.normalize(s.flatten(2), dim=2)
            ft = F.normalize(t.flatten(2), dim=2)
            mmd = (polynomial_kernel(ft, ft).mean() + polynomial_kernel(fs, fs).mean()
                   - 2 * polynomial_kernel(fs, ft).mean())
        return self.weight * mmd
