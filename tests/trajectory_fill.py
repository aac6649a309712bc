"""Deterministic tensors that are a function of a name and a shape only, for golden fixtures shared with a
reference code base: its side (scripts/make_trajectory_fixtures.py, run against the reference) and ours
(tests/test_reference_trajectory.py) compute the same values without either side's code or RNG.

Every value comes from a 32-bit integer hash (Chris Wellons' "lowbias32") of ``seed(name) + i``, computed
exactly in int64 (no overflow, no float maths), so it is the same on every CPU, OS and torch version:

    u_i = lowbias32((seed(name) + i) mod 2^32) / 2^32          in [0, 1),  seed(name) = first 4 bytes of sha256

How a state-dict entry ``key`` of shape ``shape`` is filled (:func:`fill`), by the key's last part and rank:
    conv weight [O, I, k, k]  U(-b, b), b = sqrt(6 / (I k k))     (Kaiming uniform for ReLU: var 2 / fan_in)
    linear weight / 2-D       U(-b, b), b = sqrt(3 / fan_in)       (var 1 / fan_in; also CRD's memory banks)
    1-D ``weight`` (BN gamma) 1 + U(-0.1, 0.1); half that for ``bn2.weight``, the last BN of a residual
                              branch (ResNet and WRN blocks): a frozen teacher in eval mode, whose running
                              statistics do not normalise, then keeps O(1) features and logits over its
                              15-18 blocks (resnet32x4 eval logits: std 1.9 instead of 43; wrn_40_2: 2.7, not 87)
    1-D ``bias``              U(-0.05, 0.05)
    ``running_mean``          U(-0.05, 0.05)
    ``running_var``           1 + U(0, 0.5)
    ``num_batches_tracked``   0

Beside it, tests/reference_fill.py (the model-weights fixtures of branch ``weights``) fills from torch
generators seeded by the key; this one keeps integer-hash values (the same on any torch version), damps the
residual branches for a sane eval-mode teacher, and holds the trajectories' batches, probe and CRD negatives.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch

MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x * m) mod 2^32 for int64 ``x`` in [0, 2^32), exactly (split into 16-bit halves: no int64 overflow)."""
    lo = x * (m & 0xFFFF)
    hi = ((x * (m >> 16)) & 0xFFFF) << 16
    return (lo + hi) & MASK32


def lowbias32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 integer hash of int64 values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def uniform(name: str, shape: Sequence[int]) -> torch.Tensor:
    """float64 values in [0, 1) of ``shape``: a function of ``name`` and the element index only."""
    n = math.prod(shape)
    i = (torch.arange(n, dtype=torch.int64) + name_seed(name)) & MASK32
    h = lowbias32(lowbias32(i) ^ name_seed(name + "#"))
    return (h.double() / 2.0**32).reshape(tuple(shape))


def integers(name: str, shape: Sequence[int], high: int) -> torch.Tensor:
    """int64 values in [0, high) of ``shape`` (e.g. labels, dataset indices)."""
    return (uniform(name, shape) * high).long().clamp_(max=high - 1)


def fill(key: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The value of state-dict entry ``key`` (see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    last = key.rsplit(".", 1)[-1]
    if last == "num_batches_tracked":
        return torch.zeros(shape, dtype=dtype)
    u = uniform(key, shape)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        bound = math.sqrt((6.0 if len(shape) == 4 else 3.0) / fan_in)
        value = (2 * u - 1) * bound
    elif last == "running_var":
        value = 1.0 + 0.5 * u
    elif last == "weight":
        value = (1.0 + 0.2 * (u - 0.5)) * (0.5 if key.endswith("bn2.weight") else 1.0)
    else:  # bias, running_mean, other 1-D
        value = 0.1 * (u - 0.5)
    return value.to(dtype)


def nudge(key: str, shape: Sequence[int], size: float) -> torch.Tensor:
    """An additive perturbation U(-size, size) of entry ``key`` (the self-nudged reference run)."""
    return ((2 * uniform(key + "#nudge", shape) - 1) * size).float()


def sample_index(numel: int, count: int) -> torch.Tensor:
    """``count`` evenly spaced flat indices of a tensor of ``numel`` elements (all of them when fewer)."""
    if count >= numel:
        return torch.arange(numel)
    return torch.linspace(0, numel - 1, count, dtype=torch.float64).round().long()


def sample_counts(numels: Sequence[int], total: int, minimum: int = 4) -> list[int]:
    """Coordinates sampled from each tensor: proportional to its size, at least ``minimum`` (or all)."""
    whole = max(sum(numels), 1)
    return [min(n, max(minimum, round(total * n / whole))) for n in numels]


# ------------------------------------------------------------------------------ the trajectory fixtures' inputs
#: CIFAR-100's training-set size (CRD's memory banks and sample indices).
CIFAR100_TRAIN = 50000


def trajectory_batch(step: int, batch_size: int, num_classes: int = 100, num_data: int = CIFAR100_TRAIN
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch ``step`` of a trajectory fixture: images [B, 3, 32, 32] with unit-variance uniform pixels (a
    normalised CIFAR image's scale), labels in [0, num_classes), dataset indices distinct within the batch."""
    x = ((2 * uniform(f"batch{step}.x", (batch_size, 3, 32, 32)) - 1) * math.sqrt(3.0)).float()
    y = integers(f"batch{step}.y", (batch_size,), num_classes)
    stride = num_data // batch_size
    index = integers(f"batch{step}.index", (1,), stride) + torch.arange(batch_size) * stride
    return x, y, index


def probe_images(count: int) -> torch.Tensor:
    """The fixed probe batch whose student logits a fixture records after every step."""
    return ((2 * uniform("probe.x", (count, 3, 32, 32)) - 1) * math.sqrt(3.0)).float()


def crd_negatives(step: int, batch_size: int, count: int, num_data: int = CIFAR100_TRAIN) -> torch.Tensor:
    """CRD's [B, count] negative dataset indices at ``step`` (the same on both sides of a fixture)."""
    return integers(f"batch{step}.negatives", (batch_size, count), num_data)
