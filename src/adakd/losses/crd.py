"""Contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020)."""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime.distributed import all_gather_rows, all_reduce_mean, world_size
from ..errors import ConfigError, ShapeError
from ..models.contract import FeatureShapes
from .base import DistillContext, Distiller, register_distiller
from ..runtime.device import autocast_off

#: Added to the NCE denominators (the CRD repository's ``eps``).
NCE_EPS = 1e-7


class NormalizedEmbed(nn.Module):
    """``normalize_L2(W x + b)``: a linear projection onto the unit sphere of the contrast space."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1).to(self.linear.weight.dtype)), p=2, dim=1)


def nce_loss(p: Tensor, num_samples: int) -> Tensor:
    """NCE loss (CRD Eq. 18) of normalised scores ``p`` [B, 1 + K]; column 0 is the positive pair.

        h(x) = P(x) / (P(x) + K / N)
        L = -(1 / B) * sum_b [ log h(pos_b) + sum_k log(1 - h(neg_bk)) ]
    with 1 - h(x) = (K / N) / (P(x) + K / N), and eps added to the denominators as one constant K / N + eps,
    in the CRD code's float32 order: (P + K / N) + eps instead shifts the loss value by ~1e-4 relative (each
    log(1 - h) of a negative is ~ -1e-4) and let a CRD trajectory leave the reference's faster than the
    reference leaves itself from weights nudged by 1e-7 (tests/test_reference_trajectory.py).
    """
    k = p.shape[1] - 1
    noise = k / float(num_samples)
    denominator = noise + NCE_EPS
    log_pos = torch.log(p[:, 0] / (p[:, 0] + denominator))
    log_neg = torch.log(noise / (p[:, 1:] + denominator))
    return -(log_pos.sum() + log_neg.sum()) / p.shape[0]


@register_distiller
class CRD(Distiller):
    """Contrastive representation distillation: an NCE bound on the mutual information between the
    student's and the teacher's embeddings, with negatives from momentum memory banks.

    Both pooled features are projected to ``embed_dim`` and L2-normalised (:class:`NormalizedEmbed`,
    trained with the student): v_s, v_t. Two memory banks of N = ``num_samples`` rows hold a running
    average of each sample's student (M_s) and teacher (M_t) embedding. For a sample with dataset
    index i and K negatives j_1..j_K (drawn uniformly from the other N - 1 indices):

        P_s(j) = exp(<M_t[j], v_s> / tau) / Z_s     (student anchor, teacher memory)
        P_t(j) = exp(<M_s[j], v_t> / tau) / Z_t     (teacher anchor, student memory)
        L = weight * ( NCE(P_s) + NCE(P_t) )        (:func:`nce_loss`, positive j = i)

    Z_s, Z_t are estimated once, on the first batch, as N * mean(exp(<M, v> / tau)) (as in the CRD
    repository) and kept as buffers. After the loss, under no_grad, the rows of the batch indices are
    updated: M[i] <- normalize(momentum * M[i] + (1 - momentum) * v_i). Memory banks and Z are buffers
    (saved in the state_dict), and so is the negative sampler's generator state (a resumed run draws the
    negatives the uninterrupted run would have drawn). In a multi-process job the memory update uses the
    rows of every rank's batch (all-gathered) and Z is the mean over the ranks' first batches, so the
    banks and Z stay identical on every rank. The CRD repository's "exact" mode draws negatives from other classes only; here they
    are uniform over every other sample (its default mode). ``num_negatives`` larger than N - 1 is
    capped at N - 1 with a warning. ``spot_loss`` on a subset updates only the subset's rows.

    Defaults (CRD repository): weight 0.8, embed_dim 128, num_negatives 16384, temperature 0.07,
    momentum 0.5. Needs ``ctx.indices`` (dataset indices) and ``num_samples`` (training-set size).

    Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020.
    """

    name = "crd"
    description = "CRD: NCE contrast of student/teacher embeddings against momentum memory-bank negatives"
    paper = "Tian et al., Contrastive Representation Distillation, ICLR 2020"
    default_weight = 0.8
    spot_kind = "pooled"
    teacher_outputs = frozenset({"pooled"})  # cacheable (engine/teacher_cache.py)
    needs_indices = True

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None, *,
                 num_samples: int, embed_dim: int = 128, num_negatives: int = 16384,
                 temperature: float = 0.07, momentum: float = 0.5, seed: int | None = None) -> None:
        super().__init__(student, teacher, weight)
        num_samples, embed_dim, num_negatives = int(num_samples), int(embed_dim), int(num_negatives)
        if num_samples < 2:
            raise ConfigError(f"crd needs a training set of at least 2 samples (num_samples={num_samples}).")
        if embed_dim < 1:
            raise ConfigError(f"crd embed_dim={embed_dim} must be >= 1 (default 128).")
        if num_negatives < 1:
            raise ConfigError(f"crd num_negatives={num_negatives} must be >= 1 (default 16384).")
        if not temperature > 0:
            raise ConfigError(f"crd temperature={temperature} must be > 0 (default 0.07).")
        if not 0 <= momentum < 1:
            raise ConfigError(f"crd momentum={momentum} must be in [0, 1) (default 0.5).")
        if num_negatives > num_samples - 1:
            warnings.warn(f"crd num_negatives={num_negatives} is more than the other samples of the training set "
                          f"(num_samples - 1 = {num_samples - 1}); using {num_samples - 1} negatives. "
                          f"Set num_negatives <= {num_samples - 1} to silence this.", stacklevel=2)
            num_negatives = num_samples - 1
        self.num_samples = num_samples
        self.num_negatives = num_negatives
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.embed_s = NormalizedEmbed(student.pooled, embed_dim)
        self.embed_t = NormalizedEmbed(teacher.pooled, embed_dim)
        # Rows ~ U(-a, a) with a = sqrt(3 / d): about unit norm (the CRD repository's initialisation).
        bound = 1.0 / math.sqrt(embed_dim / 3.0)
        self.register_buffer("memory_s", torch.rand(num_samples, embed_dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("memory_t", torch.rand(num_samples, embed_dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("z_s", torch.tensor(-1.0))  # < 0: not estimated yet
        self.register_buffer("z_t", torch.tensor(-1.0))
        self.seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else int(seed)
        self._generator: torch.Generator | None = None
        self._pending_generator_state: Tensor | None = None
        self._indices_checked = False  # see _check_indices
        self._z_estimated = False  # z_s, z_t known to be >= 0 (no host read of them needed); reset by a load

    # -- resumable sampler (saved as the module's extra state) ------------------------------------
    def get_extra_state(self) -> Tensor:
        """uint8 tensor: the seed (8 bytes) then the generator state (empty before the first draw)."""
        seed = torch.tensor([self.seed], dtype=torch.int64).view(torch.uint8)
        if self._generator is not None:
            state = self._generator.get_state().cpu()
        elif self._pending_generator_state is not None:
            state = self._pending_generator_state
        else:
            state = torch.zeros(0, dtype=torch.uint8)
        return torch.cat([seed, state])

    def set_extra_state(self, state: Tensor) -> None:
        state = torch.as_tensor(state).to("cpu", torch.uint8)
        self.seed = int(state[:8].clone().view(torch.int64).item())
        self._generator = None
        self._z_estimated = False  # the loaded z_s, z_t may still be < 0
        self._pending_generator_state = state[8:].clone() if state.numel() > 8 else None

    # -- negatives -------------------------------------------------------------------------------
    def _generator_on(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
            pending, self._pending_generator_state = self._pending_generator_state, None
            if pending is not None:
                try:
                    self._generator.set_state(pending)
                except RuntimeError:  # a state of another device type: continue from the seed
                    pass
        return self._generator

    def sample_negatives(self, indices: Tensor) -> Tensor:
        """[B, K] indices drawn uniformly (with replacement) from the N - 1 indices other than each positive."""
        draw = torch.randint(0, self.num_samples - 1, (indices.shape[0], self.num_negatives),
                             generator=self._generator_on(indices.device), device=indices.device)
        return draw + (draw >= indices.unsqueeze(1)).long()

    def _check_indices(self, ctx: DistillContext, batch: int) -> Tensor:
        if ctx.indices is None:
            raise ConfigError("crd needs each sample's dataset index (ctx.indices): use a data pipeline that "
                              "returns indices (the trainer does when the loss has needs_indices).")
        idx = ctx.indices.long()
        if idx.shape != (batch,):
            raise ShapeError(f"crd got {tuple(idx.shape)} indices for a batch of {batch}: pass one index per sample.")
        # reading the range is free on the CPU, a host sync on an accelerator: there, the first batch only
        if batch and (idx.device.type == "cpu" or not self._indices_checked):
            low, high = int(idx.min()), int(idx.max())
            if low < 0 or high >= self.num_samples:
                raise ConfigError(f"crd got dataset indices in [{low}, {high}], outside [0, {self.num_samples}): "
                                  "build the loss with num_samples = the training-set size.")
            self._indices_checked = True
        return idx

    # -- the loss -------------------------------------------------------------------------------
    def _scores(self, anchor: Tensor, memory: Tensor, contrast: Tensor) -> Tensor:
        """exp(<memory[contrast], anchor> / tau): [B, 1 + K]."""
        weights = memory[contrast]  # a copy: later in-place memory updates leave the graph intact
        return torch.exp(torch.bmm(weights, anchor.unsqueeze(2)).squeeze(2) / self.temperature)

    def _normaliser(self, z: Tensor, scores: Tensor) -> Tensor:
        """Z, estimated as N * mean(scores) the first time (when the buffer is still < 0), then fixed."""
        mean = scores.detach().mean()
        # the first batch of a job: the mean over every rank's batch (read on the host once, then known)
        if world_size() > 1 and not self._z_estimated and bool(z < 0):
            mean = all_reduce_mean(mean.clone())
        new = torch.where(z < 0, mean * self.num_samples, z)
        z.copy_(new)
        return new

    @torch.no_grad()
    def update_memory(self, memory: Tensor, indices: Tensor, v: Tensor) -> None:
        """memory[i] <- normalize(momentum * memory[i] + (1 - momentum) * v) for the batch's indices."""
        rows = memory[indices] * self.momentum + v.detach().to(memory.dtype) * (1.0 - self.momentum)
        memory.index_copy_(0, indices, F.normalize(rows, p=2, dim=1))

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        idx = self._check_indices(ctx, s.shape[0])
        with autocast_off(s):
            v_s = self.embed_s(s)
            v_t = self.embed_t(t.detach())
            if s.shape[0] == 0:
                return (v_s.sum() + v_t.sum()) * 0.0
            contrast = torch.cat([idx.unsqueeze(1), self.sample_negatives(idx)], dim=1)
            out_s = self._scores(v_s, self.memory_t, contrast)
            out_t = self._scores(v_t, self.memory_s, contrast)
            with torch.no_grad():
                z_s = self._normaliser(self.z_s, out_s)
                z_t = self._normaliser(self.z_t, out_t)
                self._z_estimated = True  # both Z are >= 0 from here on
            loss = nce_loss(out_s / z_s, self.num_samples) + nce_loss(out_t / z_t, self.num_samples)
        if world_size() > 1:  # every rank applies the job's whole batch: the banks stay identical
            idx, v_s, v_t = all_gather_rows(idx), all_gather_rows(v_s.detach()), all_gather_rows(v_t.detach())
        self.update_memory(self.memory_s, idx, v_s)
        self.update_memory(self.memory_t, idx, v_t)
        return self.weight * loss

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, num_samples={self.num_samples}, num_negatives={self.num_negatives}, "
                f"temperature={self.temperature}, momentum={self.momentum}")
