"""A deterministic fill of a state dict from its key names and shapes alone, and the fixed probe input,
shared by ``scripts/make_reference_fixtures.py`` (run against the reference code) and
``tests/test_reference_weights.py`` (run without it).

Every tensor is drawn from its own generator, seeded by a hash of its key, so the fill does not depend
on the order of the keys or on which code base built the model:

* ``*.running_var``: U(0.5, 1.5) (positive); ``*.running_mean``: 0.1 N(0, 1);
  ``*.num_batches_tracked``: 240 (an int64 scalar);
* 1-d ``*.weight`` (a BatchNorm's scale): 1 + 0.1 N(0, 1); ``*.bias``: 0.05 N(0, 1);
* every other ``*.weight`` (conv, linear): N(0, 1 / fan_in), fan_in = prod(shape[1:]) (the fan-in of a
  grouped conv is C_in / groups x k x k, which is exactly that), so activations keep their scale.

Entries of a feature map are compared at :func:`sample_index` positions (Knuth's multiplicative hash
of 0..k-1 modulo the size: spread over the tensor, no generator involved) plus its sum and L2 norm.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch

PROBE_SEED = 0
PROBE_BATCH = 2
SAMPLES = 256


def key_seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2**63 - 1)


def fill_value(key: str, shape: Sequence[int]) -> torch.Tensor:
    """The deterministic value of the state-dict entry ``key`` of ``shape`` (see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    if key.endswith("num_batches_tracked"):
        return torch.tensor(240, dtype=torch.int64)
    g = torch.Generator().manual_seed(key_seed(key))
    if key.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=g)
    normal = torch.randn(shape, generator=g)
    if key.endswith("running_mean"):
        return 0.1 * normal
    if key.endswith("bias"):
        return 0.05 * normal
    if len(shape) == 1:  # a norm layer's scale
        return 1.0 + 0.1 * normal
    return normal / math.sqrt(math.prod(shape[1:]))


def filled_state_dict(keys: Sequence[tuple[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
    """``{key: fill_value(key, shape)}`` in the given order."""
    return {key: fill_value(key, shape) for key, shape in keys}


def probe_input(image_size: int, channels: int = 3) -> torch.Tensor:
    """The fixed input: ``PROBE_BATCH`` N(0, 1) images from a generator seeded with ``PROBE_SEED``."""
    g = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn(PROBE_BATCH, channels, image_size, image_size, generator=g)


def sample_index(numel: int, k: int = SAMPLES) -> torch.Tensor:
    """k fixed flat positions of a tensor of ``numel`` entries (all of them when it has at most k)."""
    if numel <= k:
        return torch.arange(numel)
    return torch.tensor(sorted({(i * 2654435761) % numel for i in range(k)}))


def summarize(t: torch.Tensor) -> dict:
    """What the fixtures keep of a feature: shape, the entries at :func:`sample_index`, sum and L2 norm."""
    flat = t.detach().double().reshape(-1)
    return {"shape": list(t.shape), "sample": flat[sample_index(flat.numel())].tolist(),
            "sum": float(flat.sum()), "norm": float(flat.norm())}
