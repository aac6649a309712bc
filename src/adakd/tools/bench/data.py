"""The bench's data: a random uint8 data set, and the eager baseline's per-sample CPU input pipeline."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ...data import Batch, DeviceLoader


def random_dataset(n: int, shape: tuple[int, int, int], num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uniform uint8 images ``[n, C, H, W]`` and uniform labels (CPU), from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    return images, labels


class PerSampleLoader:
    """The eager baseline's input pipeline: torchvision-style per-sample CPU transforms.

    Holds HWC uint8 arrays (as torchvision's CIFAR does); per sample: zero-pad by ``padding``, a
    random crop, a random horizontal flip, ``ToTensor`` (CHW float / 255) and ``Normalize``; then
    ``torch.stack`` and ``.to(device)`` (``num_workers=0``: the work is on the training process).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, padding: int,
                 mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, seed: int = 0) -> None:
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.numpy()
        self.batch_size, self.padding, self.device = batch_size, padding, device
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.rng = np.random.default_rng(seed)

    def sample(self, i: int) -> torch.Tensor:
        img = self.images[i]
        h, w = img.shape[:2]
        p = self.padding
        if p:
            img = np.pad(img, ((p, p), (p, p), (0, 0)))
            top, left = self.rng.integers(0, 2 * p + 1, size=2)
            img = img[top:top + h, left:left + w]
        if self.rng.random() < 0.5:
            img = img[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
        return x.sub_(self.mean).div_(self.std)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.labels)
        while True:
            order = self.rng.permutation(n)
            for start in range(0, n - self.batch_size + 1, self.batch_size):
                rows = order[start:start + self.batch_size]
                x = torch.stack([self.sample(int(i)) for i in rows])
                y = torch.from_numpy(self.labels[rows])
                yield Batch(x.to(self.device), y.to(self.device), torch.from_numpy(rows).to(self.device))


def endless(loader: DeviceLoader) -> Iterator[Batch]:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


__all__ = ["random_dataset", "PerSampleLoader", "endless"]
