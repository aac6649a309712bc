"""Activation-boundary distillation (Heo, Lee, Yun, Choi, AAAI 2019)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.contract import Features, FeatureShapes
from .base import DistillContext, Distiller, register_distiller, zero_like
from .connectors import ConvBNRegressor, paired_stage_maps
from ..runtime.device import at_least_float32


def activation_boundary_loss(source: Tensor, target: Tensor, margin: float) -> Tensor:
    """The paper's alternative (hinge-squared) loss, summed over all elements:

        sum (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0]

    ``source``: connected student pre-activations, ``target``: teacher pre-activations.
    """
    off = (source > -margin) & (target <= 0)
    on = (source <= margin) & (target > 0)
    return ((source + margin).pow(2) * off + (source - margin).pow(2) * on).sum()


@register_distiller
class AB(Distiller):
    """Activation boundaries: the student's pre-activations (through a connector) must fall on the
    same side of 0 as the teacher's, with a margin m = 1, at every stage (after the stem).

        L_k = 2^(k - K) * (3 / 1000) * ab(c_k(P_s^k), P_t^k) / B,   k = 1..K, ab as in
              :func:`activation_boundary_loss`, c_k = identity when the shapes match, else conv + BN.

    Two stages, as in the paper and the CRD code:

    * pre-training (``pretrain_epochs``, default 30): ``pretrain_loss = sum_k L_k`` trains the
      student and the connectors (``pretrain_modules`` -> [student, self]);
    * main stage: the CRD code adds nothing (its ``loss_kd`` is 0 for AB, whatever ``-b``), so by
      default this loss returns 0 and the student learns from CE (and KD if configured). With
      ``main_stage=True`` it returns ``weight * sum_k L_k`` (weight default 1, the CRD script's -b 1).

    Heo, Lee, Yun, Choi, "Knowledge Transfer via Distillation of Activation Boundaries Formed by
    Hidden Neurons", AAAI 2019.
    """

    name = "ab"
    description = "Activation boundaries: margin loss on the signs of pre-activations (pre-training stage)"
    paper = ("Heo et al., Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons, "
             "AAAI 2019")
    default_weight = 1.0
    spot_kind = "stages"
    pretrain_epochs = 30

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 margin: float = 1.0, main_stage: bool = False, pretrain_epochs: int | None = None) -> None:
        super().__init__(student, teacher, weight)
        if margin < 0:
            raise ConfigError(f"ab margin={margin} must be >= 0 (the paper uses 1.0).")
        if pretrain_epochs is not None:
            if int(pretrain_epochs) < 0:
                raise ConfigError(f"ab pretrain_epochs={pretrain_epochs} must be >= 0.")
            self.pretrain_epochs = int(pretrain_epochs)
        self.margin = float(margin)
        self.main_stage = bool(main_stage)
        pairs = paired_stage_maps(student, teacher, "ab")
        self.connectors = nn.ModuleList(
            nn.Identity() if s == t else ConvBNRegressor(s, t, relu=False) for s, t in pairs
        )
        n = len(pairs)
        self.stage_weights = [2.0 ** (k + 1 - n) for k in range(n)]

    def spot_features(self, f: Features, teacher: bool = False) -> list[Tensor]:
        return list(f.preact_stages[1:])

    def stage_loss(self, i: int, s: Tensor, t: Tensor) -> Tensor:
        """Unweighted-by-``weight`` AB term of stage i+1 (pre-activations ``s``, ``t``)."""
        source = at_least_float32(self.connectors[i](s))
        ab = activation_boundary_loss(source, at_least_float32(t.detach()), self.margin)
        return self.stage_weights[i] * ab / s.shape[0] * 3.0 / 1000.0

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        if not self.main_stage:
            return zero_like(s)
        return self.weight * self.stage_loss(i, s, t)

    def pretrain_loss(self, s: Features, t: Features, ctx: DistillContext) -> Tensor:
        pairs = zip(self.spot_features(s), self.spot_features(t, teacher=True))
        return torch.stack([self.stage_loss(i, fs, ft) for i, (fs, ft) in enumerate(pairs)]).sum()

    def pretrain_modules(self, student: nn.Module) -> list[nn.Module]:
        return [student, self]
