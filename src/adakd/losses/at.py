"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..models.contract import FeatureShapes
from .base import DistillContext, Distiller, register_distiller
from .connectors import paired_stage_maps, pool_to_common_precise
from ..runtime.device import at_least_float32


def channel_power_mean(f: Tensor, p: float) -> Tensor:
    """``mean_c |f_c|^p`` [B, H, W], in at least float32.

    A channels_last map has its channels innermost: there ``||f||_p^p / C``, one fused reduction that
    reads a bf16 map as it is (no float32 copy, no |f|^p tensor; one rounding more than the direct
    sum). An NCHW map reduces faster directly (``|f|^2 = f * f`` exactly).
    """
    if f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous():
        norm = torch.linalg.vector_norm(f, ord=p, dim=1, dtype=torch.promote_types(f.dtype, torch.float32))
        return norm.pow(p) / f.shape[1]
    f = at_least_float32(f)
    return (f.square() if p == 2 else f.abs().pow(p)).mean(dim=1)


def attention_map(f: Tensor, p: float) -> Tensor:
    """Spatial attention [B, H*W]: ``normalize_L2( mean_c |f_c|^p )``."""
    return F.normalize(channel_power_mean(f, p).flatten(1), dim=1)


@register_distiller
class AT(Distiller):
    """Attention transfer at every stage output (after the stem).

        a(F) = vec(mean_c |F_c|^p) / ||vec(mean_c |F_c|^p)||_2
        L_k  = mean_{n, hw} ( a(F_s^k) - a(F_t^k) )^2
        L    = weight * sum_k L_k

    Maps of different spatial sizes are adaptive-average-pooled to the smaller one first.
    Stages are summed (as the CRD and mdistiller code do; the weight 1000 is calibrated for the sum).
    Defaults p = 2, weight 1000. No trainable parts; channel counts may differ.

    Zagoruyko, Komodakis, "Paying More Attention to Attention: Improving the Performance of
    Convolutional Neural Networks via Attention Transfer", ICLR 2017.
    """

    name = "at"
    description = "Attention transfer: L2 between normalised spatial attention maps at each stage"
    paper = "Zagoruyko & Komodakis, Paying More Attention to Attention, ICLR 2017"
    default_weight = 1000.0
    spot_kind = "stages"
    sakd_policy_gamma = 2.0  # the SAKD code's policy-loss scale for this loss

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 p: float = 2.0) -> None:
        super().__init__(student, teacher, weight)
        if p <= 0:
            raise ConfigError(f"at p={p} must be > 0 (the paper uses p = 2).")
        self.p = float(p)
        paired_stage_maps(student, teacher, "at")

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        s, t = pool_to_common_precise(s, t.detach())
        return self.weight * (attention_map(s, self.p) - attention_map(t, self.p)).pow(2).mean()
