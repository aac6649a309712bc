"""Overhaul of feature distillation (Heo, Kim, Yun, Park, Kwak, Choi, ICCV 2019)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError
from ..models.contract import Features, FeatureShapes
from .base import DistillContext, Distiller, register_distiller
from .connectors import paired_stage_maps, pool_to_common_precise


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def negative_margin(std: float, mean: float) -> float:
    """E[x | x < 0] for x ~ N(mean, std^2): ``mean - std * pdf(mean/std) / cdf(-mean/std)``.

    Where the negative part is negligible (cdf(-mean/std) <= 0.001) the paper's code uses -3 std.
    """
    std = abs(std)
    if std == 0.0:
        return min(mean, 0.0)
    tail = _normal_cdf(-mean / std)
    if tail <= 0.001:
        return -3.0 * std
    pdf = math.exp(-((mean / std) ** 2) / 2) / math.sqrt(2 * math.pi)
    return mean - std * pdf / tail


def bn_margins(bn: nn.Module) -> Tensor:
    """Per-channel margins [C] from a BatchNorm's affine weight (std) and bias (mean)."""
    weight = bn.weight.detach().double().cpu().tolist()
    bias = bn.bias.detach().double().cpu().tolist()
    return torch.tensor([negative_margin(w, b) for w, b in zip(weight, bias)], dtype=torch.float32)


def partial_l2(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 (no loss where both are below the teacher's margin), mean over the batch:

        d = (s - m)^2 [s > m and t <= m] + (s - t)^2 [s > t and m < t <= 0] + (s - t)^2 [t > 0]
        -> sum_{c,h,w} mean_n d

    The three cases are disjoint for a margin m <= 0 (m = E[x | x < 0]), so with the target clipped at
    the margin, tau = max(t, m), this is one squared difference, kept where t > 0 or s > tau:

        d = e^2,  e = (s - tau) [t > 0 or s > tau]

    elementwise the same numbers in a third of the passes. ``source`` may be bf16: the subtraction
    promotes it to ``margin``'s (float32 or wider) dtype.
    """
    tau = torch.maximum(target, margin)
    diff = source - tau
    e = torch.where((target > 0) | (diff > 0), diff, 0.0)
    return e.square().mean(dim=0).sum()


@register_distiller
class OFD(Distiller):
    """Feature distillation before the ReLU with a teacher margin and a partial L2 (every stage after the stem).

    A connector (1x1 conv + BN) maps the student's pre-activation map onto the teacher's channels;
    the teacher's pre-activation map is the target. The margin of channel c is the expectation of
    the negative part of the teacher's pre-ReLU response, modelled as N(beta_c, gamma_c^2) from the
    BatchNorm that produces it (``teacher_model.preact_bns()``): m_c = E[x | x < 0].

        L = weight * sum_k 2^(k - K) * partial_l2(c_k(P_s^k), P_t^k, m^k)

    Maps of different spatial sizes are average-pooled to the smaller (mdistiller pools the teacher
    to the student's size). A stage whose teacher map comes from no BatchNorm raises ShapeError.
    Default weight 0.001 (mdistiller).

    Heo, Kim, Yun, Park, Kwak, Choi, "A Comprehensive Overhaul of Feature Distillation", ICCV 2019.
    """

    name = "ofd"
    description = "OFD: partial L2 on pre-ReLU features with a margin from the teacher's BatchNorm"
    paper = "Heo et al., A Comprehensive Overhaul of Feature Distillation, ICCV 2019"
    default_weight = 0.001
    spot_kind = "stages"
    needs_models = True

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 student_model: nn.Module | None = None, teacher_model: nn.Module | None = None) -> None:
        super().__init__(student, teacher, weight)
        if teacher_model is None or not hasattr(teacher_model, "preact_bns"):
            raise ConfigError("ofd reads its margins from the teacher's BatchNorm layers: pass teacher_model= "
                              "(a ContractModel; adakd.losses.build does this from the config).")
        pairs = paired_stage_maps(student, teacher, "ofd")
        bns = list(teacher_model.preact_bns())[1:]
        if len(bns) != len(pairs):
            raise ShapeError(f"ofd: the teacher's preact_bns() lists {len(bns) + 1} entries but it has "
                             f"{len(pairs) + 1} stage outputs; preact_bns() must give one per stage (stem first).")
        self.connectors = nn.ModuleList()
        for k, ((s_shape, t_shape), bn) in enumerate(zip(pairs, bns), start=1):
            if bn is None or getattr(bn, "weight", None) is None or getattr(bn, "bias", None) is None:
                raise ShapeError(
                    f"ofd needs the affine BatchNorm whose output is the teacher's stage-{k} pre-activation "
                    f"(for the margin), but the teacher has none there (preact_bns()[{k}] is {bn!r}). "
                    f"Use a teacher with BN before its stage activations (CIFAR ResNets, WRNs, VGG-BN) "
                    f"or another feature method (at, fitnet)."
                )
            margin = bn_margins(bn)
            if margin.numel() != t_shape[0]:
                raise ShapeError(f"ofd: the teacher's stage-{k} BatchNorm has {margin.numel()} channels but the "
                                 f"stage map has {t_shape[0]}; preact_bns() points at the wrong layer.")
            self.register_buffer(f"margin{k - 1}", margin.view(1, -1, 1, 1))
            self.connectors.append(self._connector(s_shape[0], t_shape[0]))
        n = len(pairs)
        self.stage_weights = [2.0 ** (k + 1 - n) for k in range(n)]

    @staticmethod
    def _connector(s_channels: int, t_channels: int) -> nn.Sequential:
        conv = nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / t_channels))
        return nn.Sequential(conv, nn.BatchNorm2d(t_channels))

    def margin(self, i: int) -> Tensor:
        return getattr(self, f"margin{i}")

    def spot_features(self, f: Features, teacher: bool = False) -> list[Tensor]:
        return list(f.preact_stages[1:])

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        source, target = pool_to_common_precise(self.connectors[i](s), t.detach())
        margin = self.margin(i).to(torch.promote_types(source.dtype, torch.float32))
        return self.weight * self.stage_weights[i] * partial_l2(source, target, margin)
