"""Variational information distillation (Ahn et al., CVPR 2019)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.contract import FeatureShapes
from .base import DistillContext, Distiller, register_distiller
from .connectors import paired_stage_maps, pool_to_common_precise
from ..runtime.device import autocast_off


class GaussianRegressor(nn.Module):
    """Gaussian q(t | s) with mean ``mu(s)`` from 1x1 convs and a learned per-channel variance.

        mu(s)  = conv1x1(ReLU(conv1x1(ReLU(conv1x1(s)))))      (no biases, as in the authors' code)
        var_c  = softplus(alpha_c) + eps,   alpha initialised so that var = init_var
        -log q = 0.5 * ( log var_c + (mu - t)^2 / var_c )      (+ constant, dropped)
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int,
                 init_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, kernel_size=1, bias=False),
        )
        self.eps = float(eps)
        # softplus^{-1}(v) = log(exp(v) - 1) = v + log(1 - exp(-v)), with v = init_var - eps
        v = init_var - eps
        alpha = v + math.log(-math.expm1(-v))
        self.alpha = nn.Parameter(torch.full((out_channels,), alpha))

    def variance(self) -> Tensor:
        return F.softplus(self.alpha) + self.eps

    def negative_log_likelihood(self, s: Tensor, t: Tensor) -> Tensor:
        """mean over (B, C, H, W) of 0.5 * (log var + (mu(s) - t)^2 / var), computed as

            0.5 * ( mean_c log var_c + sum_c (sum_{b,h,w} (mu - t)^2) / var_c / (B C H W) )

        (one subtraction and one per-channel sum of squares over the big maps). The 1x1 convs of mu
        run in the caller's precision (bf16 under autocast, like the student's convs); the likelihood
        in at least float32 (a bf16 ``t`` is promoted inside the subtraction).
        """
        mu = self.mean(s)
        with autocast_off(mu):
            var = self.variance()
            diff = mu.to(torch.promote_types(mu.dtype, var.dtype)) - t
            squares = diff.square().sum(dim=(0, 2, 3))
            return 0.5 * (torch.log(var).mean() + (squares / var).sum() / diff.numel())


@register_distiller
class VID(Distiller):
    """Variational information distillation at every stage output (after the stem).

    Maximises a variational lower bound on the mutual information I(t; s) between teacher and student
    stage maps, with a Gaussian q(t | s) (:class:`GaussianRegressor`) per stage k:

        L_k = mean_{b,c,h,w} 0.5 * ( log var_c + (mu_k(s)_{bchw} - t_{bchw})^2 / var_c )
        L   = weight * sum_k L_k

    Maps of different spatial sizes are adaptive-average-pooled to the smaller one first (the CRD
    repository pools the student down, or the teacher when it is the larger). The hidden width of
    the regressor is the teacher's channel count (CRD repository) unless ``mid_channels`` is given.
    Defaults weight 1, init_var 5, eps 1e-5. ``spot_loss(k, ...)`` uses regressor k.

    Ahn, Hu, Damianou, Lawrence, Dai, "Variational Information Distillation for Knowledge Transfer", CVPR 2019.
    """

    name = "vid"
    description = "VID: Gaussian negative log-likelihood of each teacher stage map given the student's"
    paper = "Ahn et al., Variational Information Distillation for Knowledge Transfer, CVPR 2019"
    default_weight = 1.0
    spot_kind = "stages"
    sakd_policy_gamma = 2.0  # the SAKD code's policy-loss scale for this loss

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 init_var: float = 5.0, eps: float = 1e-5, mid_channels: int | None = None) -> None:
        super().__init__(student, teacher, weight)
        if not eps > 0 or not init_var > eps:
            raise ConfigError(f"vid needs eps > 0 and init_var > eps (got eps={eps}, init_var={init_var}; "
                              f"defaults 1e-5 and 5).")
        if mid_channels is not None and int(mid_channels) < 1:
            raise ConfigError(f"vid mid_channels={mid_channels} must be >= 1, or unset for the teacher's width.")
        pairs = paired_stage_maps(student, teacher, "vid")
        self.regressors = nn.ModuleList(
            GaussianRegressor(s[0], int(mid_channels) if mid_channels else t[0], t[0], init_var, eps)
            for s, t in pairs
        )

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        regressor = self.regressors[i]
        if s.shape[0] == 0:
            return s.sum() * 0.0 + regressor.alpha.sum() * 0.0
        s, t = pool_to_common_precise(s, t.detach())
        if not torch.is_autocast_enabled(s.device.type):  # e.g. float64 maps into a float32 regressor
            s = s.to(regressor.alpha.dtype)
        return self.weight * regressor.negative_log_likelihood(s, t)
