"""Relational knowledge distillation (Park et al., CVPR 2019)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..models.contract import Features, FeatureShapes
from .base import DistillContext, Distiller, register_distiller
from ..runtime.device import at_least_float32, autocast_off


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances [B, B] (zero diagonal) from the Gram matrix: sqrt(max(|a|^2 + |b|^2 - 2 a.b, eps))."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (e @ e.t())).clamp(min=eps).sqrt()
    return d * (1.0 - torch.eye(e.shape[0], dtype=d.dtype, device=d.device))


def normalized_distances(e: Tensor) -> Tensor:
    """Pairwise distances divided by their mean over the positive entries (the off-diagonal pairs)."""
    d = pairwise_distances(e)
    positive = (d > 0).sum().clamp(min=1)
    return d / (d.sum() / positive).clamp(min=1e-12)


def triplet_angles(e: Tensor) -> Tensor:
    """cos of the angle at vertex i between j and k: <u_ij, u_ik>, u_ij = normalize(e_j - e_i); [B, B, B]."""
    u = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return u @ u.transpose(1, 2)


@register_distiller
class RKD(Distiller):
    """Relational KD on the pooled embeddings: distance-wise and angle-wise structure.

        psi_D(i, j)    = ||e_i - e_j|| / mu,   mu = mean over pairs i != j of ||e_i - e_j||
        psi_A(i, j, k) = <(e_j - e_i) / ||e_j - e_i||, (e_k - e_i) / ||e_k - e_i||>
        L = weight * ( w_d * mean SmoothL1(psi_D^S, psi_D^T) + w_a * mean SmoothL1(psi_A^S, psi_A^T) )

    (Huber loss with delta 1, mean over the B^2 pairs and B^3 triplets, as the CRD code does.)
    ``forward`` returns the two terms ``rkd_distance`` and ``rkd_angle``; ``spot_loss`` their sum.
    No connector: the embeddings may have different sizes. Defaults weight 1, w_d 25, w_a 50.

    Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019.
    """

    name = "rkd"
    description = "RKD: Huber loss between normalised pairwise distances and triplet angles of embeddings"
    paper = "Park et al., Relational Knowledge Distillation, CVPR 2019"
    default_weight = 1.0
    spot_kind = "pooled"
    teacher_outputs = frozenset({"pooled"})  # cacheable (engine/teacher_cache.py)
    sakd_policy_gamma = 2.0  # the SAKD code's policy-loss scale for this loss

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__(student, teacher, weight)
        if distance_weight < 0 or angle_weight < 0:
            raise ConfigError(f"rkd distance_weight={distance_weight} and angle_weight={angle_weight} must be "
                              f">= 0 (defaults 25 and 50).")
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)

    def terms(self, s: Tensor, t: Tensor) -> dict[str, Tensor]:
        """The weighted ``rkd_distance`` and ``rkd_angle`` terms for embeddings ``s``, ``t`` [B, D]."""
        if s.shape[0] < 2:
            zero = s.sum() * 0.0
            return {"rkd_distance": zero, "rkd_angle": zero}
        with autocast_off(s):
            s, t = at_least_float32(s).flatten(1), at_least_float32(t.detach()).flatten(1)
            loss_d = F.smooth_l1_loss(normalized_distances(s), normalized_distances(t))
            loss_a = F.smooth_l1_loss(triplet_angles(s), triplet_angles(t))
        return {"rkd_distance": self.weight * self.distance_weight * loss_d,
                "rkd_angle": self.weight * self.angle_weight * loss_a}

    def forward(self, s: Features, t: Features, ctx: DistillContext) -> dict[str, Tensor]:
        return self.terms(s.pooled, t.pooled)

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        terms = self.terms(s, t)
        return terms["rkd_distance"] + terms["rkd_angle"]

    def extra_repr(self) -> str:
        return f"weight={self.weight}, distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"
