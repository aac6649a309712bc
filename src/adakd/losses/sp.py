"""Similarity-preserving distillation (Tung & Mori, ICCV 2019)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..models.contract import FeatureShapes
from .base import DistillContext, Distiller, register_distiller
from ..runtime.device import at_least_float32, autocast_off


def similarity_matrix(f: Tensor) -> Tensor:
    """Row-L2-normalised batch Gram matrix [B, B] of the flattened features: ``normalize(f f^T)``."""
    f = f.flatten(1)
    return F.normalize(f @ f.t(), p=2, dim=1)


@register_distiller
class SP(Distiller):
    """Similarity-preserving KD: match the batch's pairwise-similarity pattern of the last stage map.

        G = normalize_rows(Q Q^T),   Q = vec(F) in R^{B x CHW}
        L = weight * ||G_S - G_T||_F^2 / B^2

    Read at the last stage output (``stages[-1]``; the CRD repository's ``feat[-2]``). Channel counts
    and spatial sizes of student and teacher may differ: only the [B, B] matrices are compared.
    Default weight 3000 (CRD repository). A batch of fewer than 2 samples has no relations: loss 0.

    Tung, Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.
    """

    name = "sp"
    description = "Similarity-preserving KD: L2 between row-normalised batch similarity matrices of the last stage"
    paper = "Tung & Mori, Similarity-Preserving Knowledge Distillation, ICCV 2019"
    default_weight = 3000.0
    spot_kind = "last"

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None) -> None:
        super().__init__(student, teacher, weight)

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        bsz = s.shape[0]
        if bsz < 2:
            return s.sum() * 0.0
        with autocast_off(s):
            diff = similarity_matrix(at_least_float32(s)) - similarity_matrix(at_least_float32(t.detach()))
            return self.weight * diff.pow(2).sum() / (bsz * bsz)
