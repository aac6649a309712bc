"""The order of an epoch: which rows each rank reads, shared by the device and the stream loaders.

Training epochs are a permutation drawn from ``(seed, epoch)``; a DDP job's rank ``r`` of ``W`` takes the
strided slice ``order[r::W]`` after the order is cut to a multiple of ``W`` (``drop_last``) or padded by
wrapping around (so every rank runs as many steps). Evaluation keeps the rows in order.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for ``(seed, epoch)``."""
    state = np.random.SeedSequence([seed % 2**64, epoch % 2**64]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def epoch_order(num_rows: int, seed: int, epoch: int, *, shuffle: bool, world_size: int = 1,
                drop_last: bool = False) -> tuple[Tensor, torch.Generator]:
    """The whole job's row order of ``epoch`` (before the rank slice) and the generator that drew it.

    The generator is returned in the state right after the permutation, so a caller can keep drawing
    (the device loader draws its crop offsets and flips from it)."""
    n, w = num_rows, world_size
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    if w > 1 and drop_last:
        order = order[: (n // w) * w]
    elif w > 1 and shuffle:
        total = math.ceil(n / w) * w
        order = order.repeat(math.ceil(total / n))[:total]
    return order, gen


def rank_rows(num_rows: int, seed: int, epoch: int, *, shuffle: bool, rank: int = 0, world_size: int = 1,
              drop_last: bool = False) -> Tensor:
    """The rows rank ``rank`` reads in ``epoch``, in order (int64, on the CPU)."""
    order, _ = epoch_order(num_rows, seed, epoch, shuffle=shuffle, world_size=world_size, drop_last=drop_last)
    return order[rank::world_size]


def num_samples(num_rows: int, *, shuffle: bool, rank: int, world_size: int, drop_last: bool) -> int:
    """Samples one rank sees per epoch (before ``drop_last`` cuts the last partial batch)."""
    n, w = num_rows, world_size
    if w == 1:
        return n
    if drop_last:
        return n // w
    if shuffle:
        return math.ceil(n / w)
    return len(range(rank, n, w))


def num_batches(samples: int, batch_size: int, drop_last: bool) -> int:
    return samples // batch_size if drop_last else math.ceil(samples / batch_size)


class EpochPosition:
    """Epoch bookkeeping shared by the loaders: sizes, ``set_epoch``, ``state_dict``/``load_state_dict``.

    Needs ``num_rows``, ``batch_size``, ``shuffle``, ``drop_last``, ``seed``, ``rank``, ``world_size``,
    ``epoch`` and ``position`` (batches of the epoch already yielded) on the instance.
    """

    num_rows: int
    batch_size: int
    shuffle: bool
    drop_last: bool
    seed: int
    rank: int
    world_size: int
    epoch: int
    position: int
    #: Replayed augmentation (a teacher-output cache's views): epoch ``e`` is augmented as view
    #: ``e % augment_views`` of seed ``augment_seed``; None: as epoch ``e`` of the run's ``seed``.
    augment_seed: int | None = None
    augment_views: int | None = None

    def _init_position(self, *, batch_size: int, shuffle: bool, drop_last: bool, seed: int, rank: int,
                       world_size: int) -> None:
        """Check and set the batching and sharding settings; start at epoch 0, position 0."""
        if batch_size <= 0:
            raise ConfigError(f"batch_size={batch_size} must be positive.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size.")
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.position = 0

    def replay_augmentation(self, seed: int, views: int) -> None:
        """Augment epoch ``e`` as view ``e % views`` drawn from ``seed`` (the order stays the run's)."""
        if views < 1:
            raise ValueError(f"views={views} must be >= 1")
        self.augment_seed, self.augment_views = int(seed), int(views)
        self._augmentation_changed()

    def _augmentation_changed(self) -> None:
        """Hook: drop whatever was drawn with the previous augmentation settings."""

    def augmentation_key(self, epoch: int) -> tuple[int, int]:
        """(seed, augmentation epoch) the samples of ``epoch`` are augmented with."""
        seed = self.seed if self.augment_seed is None else self.augment_seed
        return seed, (epoch if self.augment_views is None else epoch % self.augment_views)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before ``drop_last`` cuts the last partial batch)."""
        return num_samples(self.num_rows, shuffle=self.shuffle, rank=self.rank, world_size=self.world_size,
                           drop_last=self.drop_last)

    def __len__(self) -> int:
        return num_batches(self.num_samples, self.batch_size, self.drop_last)

    def rows(self, epoch: int) -> Tensor:
        """This rank's rows of ``epoch`` in order (CPU int64)."""
        return rank_rows(self.num_rows, self.seed, epoch, shuffle=self.shuffle, rank=self.rank,
                         world_size=self.world_size, drop_last=self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch."""
        self.epoch = int(epoch)
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_rows": self.num_rows,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        from ..errors import CheckpointError

        ours = self.state_dict()
        for key in ("seed", "num_rows", "batch_size", "world_size"):
            if key in state and state[key] != ours[key]:
                raise CheckpointError(
                    f"the saved data-loader state has {key}={state[key]}, this run has {ours[key]}: resume with "
                    "the same data settings, seed and number of processes (or start a fresh run).")
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise CheckpointError(f"the saved data-loader position {position} is outside [0, {len(self)}].")
        self.epoch, self.position = int(state["epoch"]), position
