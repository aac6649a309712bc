"""A loader that decodes and augments images in worker processes, for datasets too big for the device.

It has the interface of :class:`~adakd.data.loader.DeviceLoader` (``Batch`` items, ``len``, ``set_epoch``,
``state_dict``/``load_state_dict``, ``rank``/``world_size``, ``batch(rows)``) and the same semantics:

* the rows of an epoch and their split over ranks come from :mod:`adakd.data.order`, the very
  function the device loader uses, so both paths read the same samples in the same order;
* each sample's augmentation is drawn from its own generator seeded by ``(seed, epoch, row)``
  (:mod:`adakd.data.transforms`), so the pixels do not depend on workers, ranks or resumption;
* a loader restored at ``position`` asks the workers for the samples from ``position * batch_size``
  on: the skipped ones are never decoded.

Workers (``torch.utils.data.DataLoader``: prefetching, pinned memory on CUDA, persistent for training;
evaluation loaders start theirs for each pass, so idle ones hold no processes) return uint8
batches; the main process copies them to the device (non-blocking) and normalises them there.
A file that fails to decode ends the iteration with one :class:`DataError` naming it.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from .augment import normalization, normalize
from .loader import Batch
from .order import EpochPosition
from .samples import Samples
from .transforms import PadCropFlip, Recipe, sample_generator, sample_seed


class _Decoded(Dataset):
    """Sample ``(row, epoch)`` -> (uint8 [C, H, W] array, label, row, None) or (None, label, row, error).

    The array may be a read-only view (of a memory-mapped or ``frombuffer`` dataset, of a Pillow image):
    it is never handed to PyTorch itself; :func:`_collate` copies the samples into a fresh batch array."""

    def __init__(self, samples: Samples, recipe: Recipe, seed: int, views: int | None = None) -> None:
        self.samples, self.recipe, self.seed, self.views = samples, recipe, seed, views

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray | None, int, int, str | None]:
        row, epoch = key
        label = int(self.samples.labels[row])
        view = epoch if self.views is None else epoch % self.views  # the augmentation epoch (replay_views)
        try:
            if isinstance(self.recipe, PadCropFlip):  # the draws the device loader makes too
                array = self.recipe.apply(self.samples.square(row),
                                          self.recipe.draw_seeded(sample_seed(self.seed, view, row)))
            else:
                gen = sample_generator(self.seed, view, row) if self.recipe.random else None
                array = self.recipe(self.samples, row, gen)
        except DataError as exc:
            return None, label, row, str(exc)
        return array, label, row, None


def _collate(items: list[tuple[np.ndarray | None, int, int, str | None]]) -> tuple[Any, ...]:
    """The batch ``(x uint8 [B, C, H, W], labels, rows)``, or ``("error", messages)``.

    ``np.stack`` copies each sample (a view, maybe read-only or strided) once into a new, writable,
    contiguous array that PyTorch then owns: the one copy ``torch.stack`` made before, and no
    "non-writable NumPy array" handed to ``torch.from_numpy``."""
    errors = [e for _, _, _, e in items if e is not None]
    if errors:
        return ("error", errors)
    x = torch.from_numpy(np.stack([a for a, _, _, _ in items]))  # type: ignore[misc]
    y = torch.tensor([label for _, label, _, _ in items], dtype=torch.int64)
    rows = torch.tensor([row for _, _, row, _ in items], dtype=torch.int64)
    return x, y, rows


class _EpochBatches:
    """The batch sampler: lists of ``(row, epoch)`` of the batches ``start ..`` of one rank's epoch.
    Set by the loader before each pass (it is iterated in the main process)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.rows: list[int] = []
        self.epoch = 0
        self.start = 0
        self.count = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        bs = self.batch_size
        for step in range(self.start, self.count):
            yield [(row, self.epoch) for row in self.rows[step * bs:(step + 1) * bs]]

    def __len__(self) -> int:
        return self.count - self.start


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding is Pillow's; torch ops in a worker are tiny


class StreamLoader(EpochPosition):
    """Batches decoded from ``samples`` by ``num_workers`` processes (0: in the calling process).

    ``train_recipe`` transforms the samples of a training loader (``shuffle=True``), ``eval_recipe``
    those of an evaluation loader and of :meth:`batch`. Sizes, order, sharding and state: as
    :class:`~adakd.data.loader.DeviceLoader` (see :mod:`adakd.data.order`).
    """

    def __init__(self, samples: Samples, *, train_recipe: Recipe, eval_recipe: Recipe, image_size: int,
                 mean: Sequence[float], std: Sequence[float], batch_size: int,
                 device: torch.device | str | None = None, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, num_workers: int = 0, prefetch_factor: int = 2) -> None:
        if len(samples) == 0:
            raise ConfigError("StreamLoader got an empty dataset; check the data split and subset settings.")
        self._init_position(batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed, rank=rank,
                            world_size=world_size)
        if num_workers < 0 or prefetch_factor < 1:
            raise ConfigError(f"num_workers={num_workers} must be >= 0 and prefetch_factor={prefetch_factor} >= 1.")
        self.samples = samples
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.train_recipe, self.eval_recipe = train_recipe, eval_recipe
        self.image_size = image_size
        self.channels_last = channels_last
        self.dtype = dtype
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.scale, self.shift = normalization(mean, std, self.device)
        if self.scale.shape[1] != samples.channels:
            raise ConfigError(f"mean/std have {self.scale.shape[1]} values but the images have "
                              f"{samples.channels} channels.")
        # keyed by (rank, world_size): shared with the shallow copies evaluation makes per rank
        self._workers: dict[tuple[int, int], tuple[DataLoader, _EpochBatches]] = {}
        self._rows_cache: tuple[tuple[int, int, int], list[int]] | None = None

    # -- what the engine reads ---------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        """Samples in the whole dataset (all ranks)."""
        return len(self.samples)

    @property
    def recipe(self) -> Recipe:
        return self.train_recipe if self.shuffle else self.eval_recipe

    @property
    def images(self) -> Tensor:
        """A shape-only stand-in for the decoded dataset, ``[N, C, S, S]`` on the meta device (no memory)."""
        return torch.empty((self.num_rows, self.samples.channels, self.image_size, self.image_size),
                           dtype=torch.uint8, device="meta")

    # -- iteration ---------------------------------------------------------------------------
    def _epoch_rows(self, epoch: int) -> list[int]:
        key = (epoch, self.rank, self.world_size)
        if self._rows_cache is None or self._rows_cache[0] != key:
            self._rows_cache = (key, self.rows(epoch).tolist())
        return self._rows_cache[1]

    def _pipeline(self) -> tuple[DataLoader, _EpochBatches]:
        key = (self.rank, self.world_size)
        if key not in self._workers:
            sampler = _EpochBatches(self.batch_size)
            workers = self.num_workers
            aug_seed = self.seed if self.augment_seed is None else self.augment_seed
            loader = DataLoader(_Decoded(self.samples, self.recipe, aug_seed, self.augment_views),
                                batch_sampler=sampler,
                                num_workers=workers, collate_fn=_collate, pin_memory=self.device.type == "cuda",
                                persistent_workers=workers > 0 and self.shuffle,
                                prefetch_factor=self.prefetch_factor if workers else None,
                                worker_init_fn=_one_thread if workers else None)
            self._workers[key] = (loader, sampler)
        return self._workers[key]

    def _to_device(self, x: Tensor, y: Tensor, rows: Tensor) -> Batch:
        x = x.to(self.device, non_blocking=True)
        x = normalize(x, self.scale, self.shift, self.dtype, self.channels_last)
        return Batch(x, y.to(self.device, non_blocking=True), rows.to(self.device, non_blocking=True))

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        start = self.position if self.shuffle else 0
        loader, sampler = self._pipeline()
        sampler.rows, sampler.epoch, sampler.start, sampler.count = self._epoch_rows(epoch), epoch, start, len(self)
        for step, item in enumerate(loader, start=start):
            if isinstance(item[0], str):
                raise DataError(item[1][0] + (f" ({len(item[1]) - 1} more in the same batch)" if len(item[1]) > 1
                                              else ""))
            batch = self._to_device(*item)
            if self.shuffle:
                self.position = step + 1
            yield batch
        if self.shuffle and self.epoch == epoch:
            self.epoch, self.position = epoch + 1, 0

    def batch(self, rows: Tensor) -> Batch:
        """The samples ``rows`` decoded here with the evaluation transform, normalised on the device."""
        dataset = _Decoded(self.samples, self.eval_recipe, self.seed)
        if not len(rows):
            raise ConfigError("StreamLoader.batch got no rows.")
        item = _collate([dataset[(int(r), 0)] for r in rows.tolist()])
        if isinstance(item[0], str):
            raise DataError(item[1][0])
        return self._to_device(*item)

    def view_batch(self, rows: Tensor, seed: int, view: int) -> Batch:
        """The samples ``rows`` decoded here with the training transform as augmentation epoch ``view`` of
        seed ``seed`` (a teacher-output cache's view), normalised on the device."""
        dataset = _Decoded(self.samples, self.train_recipe, seed)
        item = _collate([dataset[(int(r), view)] for r in rows.tolist()])
        if isinstance(item[0], str):
            raise DataError(item[1][0])
        return self._to_device(*item)

    def _augmentation_changed(self) -> None:
        self._workers.clear()  # the workers' dataset holds the augmentation seed: new workers on next pass

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage-collected)."""
        self._workers.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_workers"] = {}
        return state
