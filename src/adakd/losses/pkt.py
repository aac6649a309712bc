"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.contract import FeatureShapes
from .base import DistillContext, Distiller, register_distiller
from ..runtime.device import at_least_float32, autocast_off


def cosine_conditional_probabilities(f: Tensor, eps: float) -> Tensor:
    """P[i, j] = K(i, j) / sum_j K(i, j), with the cosine kernel K = (cos(f_i, f_j) + 1) / 2."""
    f = f.flatten(1)
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    kernel = (f @ f.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


@register_distiller
class PKT(Distiller):
    """Probabilistic knowledge transfer: match the conditional probability distributions that a
    cosine-similarity kernel induces on the batch's pooled embeddings.

        x~ = x / (||x|| + eps),   K_ij = (x~_i . x~_j + 1) / 2,   P_ij = K_ij / sum_j K_ij
        L  = weight * mean_{i,j} P^T_ij * log( (P^T_ij + eps) / (P^S_ij + eps) )

    (mean over all B^2 entries, as the authors' code does; eps = 1e-7.) Embedding sizes may differ.
    Default weight 30000 (CRD repository). A batch of fewer than 2 samples gives 0.

    Passalis, Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018.
    """

    name = "pkt"
    description = "PKT: KL between cosine-kernel conditional probabilities of student and teacher embeddings"
    paper = "Passalis & Tefas, Learning Deep Representations with Probabilistic Knowledge Transfer, ECCV 2018"
    default_weight = 30000.0
    spot_kind = "pooled"
    teacher_outputs = frozenset({"pooled"})  # cacheable (engine/teacher_cache.py)

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 eps: float = 1e-7) -> None:
        super().__init__(student, teacher, weight)
        if not eps > 0:
            raise ConfigError(f"pkt eps={eps} must be > 0 (default 1e-7).")
        self.eps = float(eps)

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        if s.shape[0] < 2:
            return s.sum() * 0.0
        with autocast_off(s):
            p_s = cosine_conditional_probabilities(at_least_float32(s), self.eps)
            p_t = cosine_conditional_probabilities(at_least_float32(t.detach()), self.eps)
            kl = p_t * torch.log((p_t + self.eps) / (p_s + self.eps))
            return self.weight * kl.mean()

    def extra_repr(self) -> str:
        return f"weight={self.weight}, eps={self.eps}"
