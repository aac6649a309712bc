"""One split of a dataset as a list of samples, before any decision on where they are decoded.

:class:`ArraySamples` holds decoded uint8 images (CIFAR, the IDX datasets); :class:`FileSamples` holds
image file paths (image folders, ImageNet, Tiny-ImageNet) and decodes one on demand. Both give
``square(i)`` (uint8 ``[C, S, S]``, the device path's pixels), ``decode_all()`` (the device path's
array) and ``subset(rows)``; files also give ``image(i)``, the original image for the ImageNet recipe.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .image_files import decode_images, decode_one, open_image


@dataclass
class ArraySamples:
    """Decoded images uint8 ``[N, C, S, S]`` and int64 labels ``[N]``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def square(self, i: int) -> np.ndarray:
        return self.images[i]

    def image(self, i: int) -> Any:
        raise ConfigError("the imagenet recipe crops from the original image files; this dataset is held as "
                          "decoded arrays: use data.recipe=pad_crop_flip.")

    def describe(self, i: int) -> str:
        return f"row {i}"

    def decode_all(self) -> np.ndarray:
        return self.images

    def subset(self, rows: np.ndarray) -> ArraySamples:
        return ArraySamples(self.images[rows], self.labels[rows])


@dataclass
class FileSamples:
    """Image files with labels; ``size`` is the side ``square`` resizes to, ``grayscale`` the mode."""

    paths: list[Path]
    labels: np.ndarray
    size: int
    grayscale: bool = False

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    @property
    def mode(self) -> str:
        return "L" if self.grayscale else "RGB"

    def square(self, i: int) -> np.ndarray:
        return decode_one(self.paths[i], self.size, self.mode)

    def image(self, i: int) -> Any:
        return open_image(self.paths[i], self.mode)

    def describe(self, i: int) -> str:
        return str(self.paths[i])

    def decode_all(self) -> np.ndarray:
        return decode_images(self.paths, self.size, self.grayscale)

    def subset(self, rows: np.ndarray) -> FileSamples:
        return FileSamples([self.paths[int(r)] for r in rows], self.labels[rows], self.size, self.grayscale)


Samples = ArraySamples | FileSamples


def drop_unreadable(samples: Samples) -> tuple[Samples, list[str]]:
    """``samples`` without the files that do not decode (each decoded once, in threads), and their names.

    Used when ``data.bad_images=skip``: the set of samples is fixed before any order is drawn, so the
    epochs, shards and resumption stay deterministic."""
    if not isinstance(samples, FileSamples):
        return samples, []

    def readable(i: int) -> bool:
        try:
            samples.image(i)
        except DataError:
            return False
        return True

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        ok = np.fromiter(pool.map(readable, range(len(samples))), dtype=bool, count=len(samples))
    bad = [samples.describe(i) for i in np.flatnonzero(~ok)]
    return (samples.subset(np.flatnonzero(ok)) if bad else samples), bad
