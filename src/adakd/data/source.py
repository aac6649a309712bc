"""The interface every dataset reader implements (registered in ``adakd.registry.DATASETS``).

A reader is constructed with ``root``, ``download``, ``image_size`` and its own options, exposes
:class:`DatasetInfo` as ``info``, and returns a whole split as in-memory arrays:
``images`` uint8 ``[N, C, H, W]`` and ``labels`` int64 ``[N]`` (``load``), or as samples that the
stream pipeline decodes on demand (``samples``; by default the loaded arrays).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .info import DatasetInfo
from .roots import resolve_root
from .samples import ArraySamples, FileSamples

SPLITS = ("train", "test")


class DatasetSource(ABC):
    """Base class of the dataset readers: root resolution, split checks, output validation."""

    #: Native image side, or None for readers that resize to a configured size.
    native_size: int | None = None

    def __init__(self, root: str | os.PathLike[str] | None = None, download: bool = False,
                 image_size: int | None = None) -> None:
        self.root: Path = resolve_root(root)
        self.download = download
        if self.native_size is not None and image_size not in (None, self.native_size):
            raise ConfigError(
                f"{type(self).__name__} images are {self.native_size}x{self.native_size}; data.image_size="
                f"{image_size} only applies to image folders. Remove data.image_size."
            )
        self.image_size = image_size

    @property
    @abstractmethod
    def info(self) -> DatasetInfo:
        """Static facts about the dataset."""

    @abstractmethod
    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Read ``split`` ("train" or "test")."""

    def samples(self, split: str) -> ArraySamples | FileSamples:
        """``split`` as samples, not necessarily decoded (file readers override this to list files)."""
        return ArraySamples(*self.load(split))

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole ``split`` as (uint8 images ``[N, C, H, W]``, int64 labels ``[N]``)."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}: use 'train' or 'test' "
                              "(a validation split is held out of 'train' with data.val_fraction).")
        images, labels = self._load(split)
        info = self.info
        expected = (info.in_channels, info.image_size, info.image_size)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            raise DataError(f"{info.name} {split}: images of shape {images.shape} ({images.dtype}), "
                            f"expected [N, {', '.join(map(str, expected))}] uint8; the files are malformed.")
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (images.shape[0],):
            raise DataError(f"{info.name} {split}: {images.shape[0]} images but {labels.shape[0]} labels; "
                            "the files do not belong together.")
        if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
            raise DataError(f"{info.name} {split}: labels span [{labels.min()}, {labels.max()}], "
                            f"outside [0, {info.num_classes - 1}]; the label file is corrupt.")
        return np.ascontiguousarray(images), labels
