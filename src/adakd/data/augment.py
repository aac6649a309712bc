"""Batched augmentation on the device, without per-sample Python.

:func:`crop_and_flip` is torchvision's ``RandomCrop(size, padding=p)`` (zero fill) followed by
``RandomHorizontalFlip``, applied to a whole batch with per-sample draws in a single gather;
:func:`normalize` maps uint8 pixels to ``(x / 255 - mean) / std``. The random draws are made by
the caller, so the functions are deterministic and testable.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_and_flip(images: Tensor, offsets: Tensor | None, flips: Tensor | None, padding: int) -> Tensor:
    """Per-sample random crop with zero padding, then per-sample horizontal flip, in one gather.

    ``images`` ``[B, C, H, W]``; ``offsets`` ``[B, 2]`` = (top, left) of each crop in the image
    zero-padded by ``padding`` on every side, each in ``[0, 2 * padding]`` (None: no shift);
    ``flips`` ``[B]`` bool (None: no flip). With ``padded`` the padded batch,
    ``out[b, c, i, j] = padded[b, c, top_b + i, left_b + (W - 1 - j if flips[b] else j)]``.
    Same dtype as ``images`` (crop uint8 before normalising: the padding is pixel value 0).
    """
    if offsets is None and flips is None:
        return images
    b, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    width = w + 2 * padding
    if offsets is None:
        offsets = torch.full((b, 2), padding, dtype=torch.long, device=device)
    j = torch.arange(w, device=device).view(1, w)
    cols = j if flips is None else torch.where(flips.view(b, 1), w - 1 - j, j)
    cols = cols + offsets[:, 1:2]  # [B, W]
    rows = torch.arange(h, device=device).view(1, h) + offsets[:, 0:1]  # [B, H]
    flat = (rows.view(b, h, 1) * width + cols.view(b, 1, w)).view(b, 1, h * w)
    out = padded.reshape(b, c, -1).gather(2, flat.expand(b, c, h * w))
    return out.view(b, c, h, w)


def crop_with_padding(images: Tensor, offsets: Tensor, padding: int) -> Tensor:
    """torchvision's ``RandomCrop(padding=p)`` with given offsets (see :func:`crop_and_flip`)."""
    return crop_and_flip(images, offsets, None, padding)


def flip(images: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right the images of ``images`` ``[B, C, H, W]`` where ``mask`` ``[B]`` is true."""
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(3), images)


def normalization(mean: Sequence[float], std: Sequence[float], device: torch.device | str | None = None
                  ) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` ``[1, C, 1, 1]`` with ``(x / 255 - mean) / std == x * scale - shift``."""
    mean_t = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    scale, shift = 1.0 / (255.0 * std_t), mean_t / std_t
    return scale.to(device=device, dtype=torch.float32), shift.to(device=device, dtype=torch.float32)


def normalize(images: Tensor, scale: Tensor, shift: Tensor, dtype: torch.dtype = torch.float32,
              channels_last: bool = False) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> ``x * scale - shift`` (see :func:`normalization`) as ``dtype``."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.addcmul(-shift, images.to(torch.float32), scale)
    return out.to(dtype=dtype, memory_format=memory_format)
