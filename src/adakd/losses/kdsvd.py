"""Knowledge distillation with singular value decomposition (Lee, Kim, Song, ECCV 2018)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..models.contract import Features, FeatureShapes
from .base import DistillContext, Distiller, register_distiller
from .connectors import paired_stage_maps
from ..runtime.device import autocast_off


def _finite(x: Tensor) -> Tensor:
    """``x`` with NaN and +-inf replaced by 0 (one pass)."""
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _sanitize_grad(x: Tensor) -> Tensor:
    """``x`` unchanged, but a non-finite gradient flowing back through it is zeroed.

    The eigh backward (like an SVD's) divides by s_i^2 - s_j^2, which is infinite for repeated singular
    values (e.g. an all-zero or rank-deficient map); this keeps such NaN/inf out of the student.
    """
    if x.requires_grad:
        x.register_hook(lambda grad: None if grad is None else _finite(grad))
    return x


def top_right_singular(f: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Top-n right singular vectors and values of each sample's (H*W) x C map X.

    Returns V [B, C, n] (each column L2-normalised) and S [B, n] (L2-normalised over the n values),
    n capped at min(H*W, C) as a thin SVD would. Computed from the smaller Gram matrix instead of an
    SVD of X (the same vectors up to sign, which the callers fix; about 3x cheaper on a CPU):

        C <= H*W:  X^T X = V diag(s^2) V^T               -> V's top n columns
        C >  H*W:  X X^T = U diag(s^2) U^T,  v_i = X^T u_i / s_i   -> normalise(X^T u_i)

    Only the top n singular values enter the loss, and those the Gram matrix resolves as well as the
    SVD does (its condition number squares, but that costs only the smallest values' accuracy).
    """
    b, c = f.shape[:2]
    x = _sanitize_grad(f.flatten(2).transpose(1, 2))  # [B, HW, C]: a view in NCHW and in channels_last
    hw = x.shape[1]
    n = min(n, c, hw)
    if c <= hw:
        eigenvalues, vectors = torch.linalg.eigh(x.transpose(1, 2) @ x)  # ascending
        v = vectors[:, :, -n:].flip(-1)
    else:
        eigenvalues, vectors = torch.linalg.eigh(x @ x.transpose(1, 2))
        v = x.transpose(1, 2) @ vectors[:, :, -n:].flip(-1)
    s = eigenvalues[:, -n:].flip(-1).clamp(min=0).sqrt()
    return F.normalize(_finite(v), dim=1), F.normalize(_finite(s), dim=1)


def canonical_sign(v: Tensor) -> Tensor:
    """Each column of v [B, C, n] flipped so that its largest-magnitude entry is positive.

    A singular vector is defined up to sign, and the RBF relation between two stages is not
    invariant to flipping one of them; fixing the sign makes the loss independent of the SVD
    backend (CPU/CUDA LAPACK choose signs differently).
    """
    idx = v.detach().abs().argmax(dim=1, keepdim=True)
    sign = torch.sign(torch.gather(v.detach(), 1, idx))
    return v * torch.where(sign == 0, torch.ones_like(sign), sign)


def align_to_teacher(v_s: Tensor, v_t: Tensor) -> Tensor:
    """For each teacher vector, the student vector with the largest |cosine|, sign-flipped to agree.

    v_s [B, C, n_s], v_t [B, C, n_t] -> [B, C, n_t]. The selection is piecewise constant (no gradient).
    """
    cosine = torch.bmm(v_s.transpose(1, 2), v_t)  # [B, n_s, n_t]
    best = cosine.abs().amax(dim=1, keepdim=True)
    select = torch.where(cosine.abs() == best, torch.sign(cosine), torch.zeros_like(cosine)).detach()
    return torch.bmm(v_s, select)


def _rbf(v: Tensor, prev: Tensor) -> Tensor:
    """exp(-(v[n, c, j] - prev[n, c', j])^2 / 8) as [B, C, C', n] (* -0.125 is exactly / -8)."""
    return (v.unsqueeze(2) - prev.unsqueeze(1)).square().mul_(-0.125).exp()


@register_distiller
class KDSVD(Distiller):
    """KD-SVD: match how the dominant singular directions of consecutive stages relate.

    Per stage k the (H*W) x C map gives its top right singular vectors (teacher: k_t = ``k``,
    student: k_t + 3, aligned to the teacher's by largest |cosine| and sign; the teacher's signs are
    fixed by :func:`canonical_sign`, which the CRD code leaves to the SVD backend). Both are scaled by
    the teacher's normalised singular values. Between consecutive stages a Gaussian (RBF) kernel

        R^k[n, c, c', j] = exp( -(v^k[n, c, j] - v^{k-1}[n, c', j])^2 / 8 )

    is compared: L = weight * sum_{k>=2} sum (R_s^k - R_t^k)^2 / B.
    Singular vectors live in channel space, so channel counts must match stage by stage. Non-finite
    values are zeroed in the forward pass (as the CRD code does) and in the SVD's backward pass
    (repeated singular values). Defaults k = 1 (CRD code), weight 1 (mdistiller; the CRD scripts
    list no weight for it). It does not decompose into per-stage spots (each term spans two stages).
    mdistiller's code decomposes another matrix, ``feat.view(B, C*H, W)`` (singular vectors over the
    image width, W x W): a different, much cheaper loss; the cost of this one is measured in
    benchmarks/RESULTS.md.

    Lee, Kim, Song, "Self-supervised Knowledge Distillation Using Singular Value Decomposition", ECCV 2018.
    """

    name = "kdsvd"
    description = "KD-SVD: RBF relations between the dominant singular vectors of consecutive stages"
    paper = "Lee et al., Self-supervised Knowledge Distillation Using Singular Value Decomposition, ECCV 2018"
    default_weight = 1.0
    spot_kind = "stages"

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 k: int = 1) -> None:
        super().__init__(student, teacher, weight)
        if int(k) < 1:
            raise ConfigError(f"kdsvd k={k} must be >= 1 (the CRD code uses 1).")
        self.k = int(k)
        pairs = paired_stage_maps(student, teacher, "kdsvd")
        s_channels = [s[0] for s, _ in pairs]
        t_channels = [t[0] for _, t in pairs]
        if s_channels != t_channels:
            raise ShapeError(
                f"kdsvd compares singular vectors in channel space, so it needs equal channel counts per "
                f"stage; the student has {s_channels} and the teacher {t_channels}. Use a pair of equal "
                f"widths (e.g. resnet32x4->resnet8x4) or a method without this constraint (at, nst)."
            )
        if len(pairs) < 2:
            raise ShapeError("kdsvd relates consecutive stages, so it needs at least 2 stages after the stem.")

    def forward(self, s: Features, t: Features, ctx: DistillContext) -> dict[str, Tensor]:
        with autocast_off(s.logits):
            return {self.name: self.weight * self._loss(s, t)}

    def _loss(self, s: Features, t: Features) -> Tensor:
        terms = []
        prev_s = prev_t = None
        for f_s, f_t in zip(s.stages[1:], t.stages[1:]):
            dtype = torch.float64 if f_s.dtype == torch.float64 else torch.float32
            with torch.no_grad():  # the teacher is frozen
                v_t, s_t = top_right_singular(f_t.to(dtype), self.k)
                v_t = canonical_sign(v_t)
            v_s, _ = top_right_singular(f_s.to(dtype), self.k + 3)
            v_s = align_to_teacher(v_s, v_t)
            scale = s_t.unsqueeze(1)  # [B, 1, k]
            v_s, v_t = v_s * scale, v_t * scale
            if prev_s is not None:
                rbf_s = _rbf(v_s, prev_s)
                with torch.no_grad():  # the teacher's side: frozen
                    rbf_t = _rbf(v_t, prev_t)
                terms.append(_finite((rbf_s - rbf_t).pow(2)).sum())
            prev_s, prev_t = v_s, v_t
        return torch.stack(terms).sum() / s.logits.shape[0]
