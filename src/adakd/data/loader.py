"""A data loader whose whole dataset lives on the training device (the airbench idea).

Images stay uint8 ``[N, C, H, W]`` on the device; each batch is gathered by index, augmented
with batched ops (:mod:`adakd.data.augment`) and normalised there: no worker processes, no
per-sample Python. The order of an epoch is a function of ``(seed, epoch)``, each sample's
augmentation a function of ``(seed, epoch, row)`` (:func:`adakd.data.transforms.pad_crop_flip_draws`, the
stream loader's very draws, vectorised over the epoch: the same pixels on both paths, and replayable
for a teacher-output cache), so a loader restored with :meth:`DeviceLoader.load_state_dict` continues
with exactly the batch that would have come next.
"""
from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .augment import crop_and_flip, normalization, normalize
from .order import EpochPosition, epoch_order, epoch_seed
from .transforms import pad_crop_flip_draws, sample_seeds


class Batch(NamedTuple):
    """One batch: inputs ``x`` (float, normalised), labels ``y`` (int64) and ``index``, the int64
    row of each sample in the loader's dataset (``0 <= index < len(dataset)``; CRD's memory bank key)."""

    x: Tensor
    y: Tensor
    index: Tensor


_epoch_seed = epoch_seed  # the name older callers import


def _as_tensor(array: Any, dtype: torch.dtype) -> Tensor:
    if isinstance(array, Tensor):
        return array.to(dtype)
    array = np.asarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


class DeviceLoader(EpochPosition):
    """Batches of a device-resident uint8 dataset with random crop + flip + normalisation.

    Training (``shuffle=True``): every epoch is a permutation drawn from ``(seed, epoch)``;
    ranks of a DDP job take disjoint strided slices ``perm[rank::world_size]`` of the same
    permutation, made equal in length (cut with ``drop_last``, else padded by wrapping around),
    so every rank runs ``len(loader)`` steps. Augmentation, when on: a per-sample random crop of
    the image zero-padded by ``crop_padding`` and a per-sample horizontal flip with p = 0.5.

    Evaluation (``shuffle=False``): the rows in order, no augmentation, each pass from the start;
    with several ranks the strided slices are left unequal (no sample is repeated).

    ``state_dict()`` holds ``epoch`` and ``position`` (batches of the epoch already yielded);
    an interrupted iteration resumes at ``position``, a finished one moves to the next epoch.
    """

    def __init__(self, images: Any, labels: Any, *, mean: Sequence[float], std: Sequence[float], batch_size: int,
                 device: torch.device | str | None = None, shuffle: bool = False, augment: bool = False,
                 crop_padding: int = 0, flip: bool = False, drop_last: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.images = _as_tensor(images, torch.uint8).to(device)
        self.labels = _as_tensor(labels, torch.int64).to(device)
        if self.images.ndim != 4 or self.labels.shape != (self.images.shape[0],):
            raise ConfigError(f"DeviceLoader needs images [N, C, H, W] and labels [N]; got "
                              f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}.")
        if self.images.shape[0] == 0:
            raise ConfigError("DeviceLoader got an empty dataset; check the data split and subset settings.")
        self._init_position(batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed, rank=rank,
                            world_size=world_size)
        if crop_padding < 0:
            raise ConfigError(f"crop_padding={crop_padding} must be >= 0.")
        self.device = device
        self.augment = augment
        self.crop_padding = crop_padding if augment else 0
        self.flip = flip and augment
        self.channels_last = channels_last
        self.dtype = dtype
        self.scale, self.shift = normalization(mean, std, device)
        if self.scale.shape[1] != self.images.shape[1]:
            raise ConfigError(f"mean/std have {self.scale.shape[1]} values but the images have "
                              f"{self.images.shape[1]} channels.")
        self._plan_cache: tuple[int, tuple[Tensor, Tensor | None, Tensor | None]] | None = None

    @property
    def num_rows(self) -> int:
        """Samples in the whole dataset (all ranks)."""
        return int(self.images.shape[0])

    # -- iteration ---------------------------------------------------------------------------
    def _plan(self, epoch: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """This rank's row order and augmentation draws for ``epoch`` (on the device)."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        w = self.world_size
        order, _ = epoch_order(self.num_rows, self.seed, epoch, shuffle=self.shuffle, world_size=w,
                               drop_last=self.drop_last)
        rows = order[self.rank::w]
        offsets = flips = None
        if self.crop_padding > 0 or self.flip:  # per-sample draws from (seed, epoch, row): one vectorised call
            aug_seed, view = self.augmentation_key(epoch)
            off, fl = pad_crop_flip_draws(sample_seeds(aug_seed, view, rows.numpy()), self.crop_padding, self.flip)
            offsets = torch.from_numpy(off).to(self.device) if self.crop_padding > 0 else None
            flips = torch.from_numpy(fl).to(self.device) if self.flip else None
        plan = (rows.to(self.device), offsets, flips)
        self._plan_cache = (epoch, plan)
        return plan

    def _augmentation_changed(self) -> None:
        self._plan_cache = None

    def view_batch(self, rows: Tensor, seed: int, view: int) -> Batch:
        """Rows ``rows`` augmented as in augmentation epoch ``view`` of seed ``seed`` (a cache view)."""
        offsets = flips = None
        if self.crop_padding > 0 or self.flip:
            off, fl = pad_crop_flip_draws(sample_seeds(seed, view, rows.cpu().numpy()), self.crop_padding, self.flip)
            offsets = torch.from_numpy(off).to(self.device) if self.crop_padding > 0 else None
            flips = torch.from_numpy(fl).to(self.device) if self.flip else None
        return self.batch(rows.to(self.device), offsets, flips)

    def batch(self, rows: Tensor, offsets: Tensor | None = None, flips: Tensor | None = None) -> Batch:
        """Gather ``rows`` (device int64), apply the given crop offsets / flip mask, normalise."""
        x = crop_and_flip(self.images.index_select(0, rows), offsets, flips, self.crop_padding)
        x = normalize(x, self.scale, self.shift, self.dtype, self.channels_last)
        return Batch(x, self.labels.index_select(0, rows), rows)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        start = self.position if self.shuffle else 0
        rows, offsets, flips = self._plan(epoch)
        bs = self.batch_size
        for step in range(start, len(self)):
            part = slice(step * bs, (step + 1) * bs)
            batch = self.batch(rows[part], None if offsets is None else offsets[part],
                               None if flips is None else flips[part])
            if self.shuffle:
                self.position = step + 1
            yield batch
        if self.shuffle and self.epoch == epoch:
            self.epoch, self.position = epoch + 1, 0
