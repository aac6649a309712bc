"""Correlation congruence (Peng et al., ICCV 2019)."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.contract import FeatureShapes
from .base import DistillContext, Distiller, register_distiller
from ..runtime.device import autocast_off


def taylor_rbf_correlation(e: Tensor, gamma: float, order: int) -> Tensor:
    """[B, B] Gaussian RBF kernel of the L2-normalised rows, by its ``order``-th order Taylor expansion.

    For unit vectors ||x - y||^2 = 2 - 2 x.y, so exp(-gamma ||x - y||^2) = e^{-2 gamma} e^{2 gamma x.y}
    ~ sum_{p=0}^{P} e^{-2 gamma} (2 gamma)^p / p! (x.y)^p.
    """
    e = F.normalize(e.flatten(1), p=2, dim=1)
    sim = e @ e.t()
    corr = sim.new_zeros(sim.shape)
    for p in range(order + 1):
        corr = corr + math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p) * sim.pow(p)
    return corr


def adjacent_difference_congruence(f_s: Tensor, f_t: Tensor) -> Tensor:
    """The CRD repository's ``Correlation``: mean_i sum_d |f_s - f_t|_{i,d} * |f_s - f_t|_{i+1,d}."""
    delta = (f_s - f_t).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


FORMS = ("taylor_rbf", "crd_code")


@register_distiller
class CC(Distiller):
    """Correlation congruence: make the student's sample-to-sample relations match the teacher's.

    Both pooled embeddings are first mapped to ``embed_dim`` by a trained linear layer, one per model
    (f = W x + b, as in the CRD repository). Two forms of the congruence term:

    ``form="crd_code"`` (default): the CRD repository's ``Correlation`` (an author-supplied surrogate,
    :func:`adjacent_difference_congruence`), with d = |f_S - f_T| and B samples

        L = weight * 1/(B-1) * sum_{i=1}^{B-1} sum_k d_{i,k} d_{i+1,k}

    The reference weight 0.02 (docs/recipes.md) was tuned for this form, so the CRD table's CC row
    is reproduced with it.

    ``form="taylor_rbf"``: the paper's formula, the P-order Taylor expansion of the Gaussian RBF
    kernel exp(-gamma ||f~_i - f~_j||^2) of the L2-normalised embeddings f~ = f / ||f||,

        C_ij = sum_{p=0}^{P} e^{-2 gamma} (2 gamma)^p / p! (f~_i . f~_j)^p,
        L = weight * ||C_S - C_T||_F^2 / B^2

    (defaults P = 2, gamma = 0.4 as in the Knowledge-Distillation-Zoo implementation). It is about
    10^5 times smaller than the surrogate at initialisation: raise ``weight`` when choosing it.
    A batch of fewer than 2 samples gives 0.

    Peng, Jin, Liu, Li, Wu, Liu, Zhou, Zhang, "Correlation Congruence for Knowledge Distillation", ICCV 2019.
    """

    name = "cc"
    description = ("Correlation congruence: match sample-to-sample relations of embeddings (CRD-code form; "
                   "Taylor-RBF correlation matrices with form=taylor_rbf)")
    paper = "Peng et al., Correlation Congruence for Knowledge Distillation, ICCV 2019"
    default_weight = 0.02
    spot_kind = "pooled"
    teacher_outputs = frozenset({"pooled"})  # cacheable (engine/teacher_cache.py)

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 embed_dim: int = 128, gamma: float = 0.4, p_order: int = 2, form: str = "crd_code") -> None:
        super().__init__(student, teacher, weight)
        if form not in FORMS:
            raise ConfigError(f"cc form={form!r} is unknown: use one of {', '.join(FORMS)} (default crd_code).")
        if int(embed_dim) < 1:
            raise ConfigError(f"cc embed_dim={embed_dim} must be >= 1 (default 128).")
        if not gamma > 0:
            raise ConfigError(f"cc gamma={gamma} must be > 0 (default 0.4).")
        if int(p_order) < 0 or int(p_order) != p_order:
            raise ConfigError(f"cc p_order={p_order} must be an integer >= 0 (default 2).")
        self.form = form
        self.gamma = float(gamma)
        self.p_order = int(p_order)
        self.embed_s = nn.Linear(student.pooled, int(embed_dim))
        self.embed_t = nn.Linear(teacher.pooled, int(embed_dim))

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        with autocast_off(s):
            f_s = self.embed_s(s.flatten(1).to(self.embed_s.weight.dtype))
            f_t = self.embed_t(t.detach().flatten(1).to(self.embed_t.weight.dtype))
            if s.shape[0] < 2:
                return (f_s.sum() + f_t.sum()) * 0.0
            if self.form == "crd_code":
                return self.weight * adjacent_difference_congruence(f_s, f_t)
            c_s = taylor_rbf_correlation(f_s, self.gamma, self.p_order)
            c_t = taylor_rbf_correlation(f_t, self.gamma, self.p_order)
            return self.weight * F.mse_loss(c_s, c_t)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, form={self.form}, gamma={self.gamma}, p_order={self.p_order}"
