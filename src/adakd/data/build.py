"""From a :class:`DataConfig` to train / val / test loaders, device-resident or streamed."""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError
from ..registry import DATASETS
from ..config import DataConfig
from .info import DatasetInfo
from .loader import DeviceLoader
from .pipeline import PipelineChoice, choose_pipeline
from .samples import FileSamples, Samples, drop_unreadable
from .source import DatasetSource
from .splits import balanced_subset, train_val_split
from .stream import StreamLoader
from .transforms import recipes


@dataclass
class DataBundle:
    """The loaders of one run. ``val`` is held out of the training split (None when
    ``val_fraction == 0``); ``num_train`` is the number of training samples actually used;
    ``pipeline`` says which pipeline was taken and why; ``skipped`` names the files left out
    (``data.bad_images=skip``)."""

    train: DeviceLoader | StreamLoader
    val: DeviceLoader | StreamLoader | None
    test: DeviceLoader | StreamLoader
    info: DatasetInfo
    num_train: int
    pipeline: PipelineChoice | None = None
    skipped: list[str] = field(default_factory=list)


def open_dataset(name: str, root: str | os.PathLike[str] | None = None, download: bool = False,
                 image_size: int | None = None, **options: Any) -> DatasetSource:
    """The registered reader ``name``; an unknown option becomes a :class:`ConfigError` naming the valid ones."""
    factory = DATASETS.get(name).factory
    params = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = sorted(p for p in params if p not in ("self", "root", "download", "image_size"))
        raise ConfigError(f"dataset {name!r} has no option {', '.join(unknown)}; its data.options are: "
                          f"{', '.join(valid) or 'none'}.")
    return factory(root=root, download=download, image_size=image_size, **options)


def load_split(name: str, root: str | os.PathLike[str] | None = None, split: str = "train",
               **options: Any) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
    """One split of a dataset as (uint8 images ``[N, C, H, W]``, int64 labels ``[N]``, info).

    ``options`` are the reader's keywords (``download``, ``image_size``, ``verify_checksum``, ...).
    """
    dataset = open_dataset(name, root, **options)
    images, labels = dataset.load(split)
    return images, labels, dataset.info


def default_workers() -> int:
    """Worker processes of the stream pipeline when ``data.num_workers`` is not set: min(8, CPU count)."""
    return max(1, min(8, os.cpu_count() or 1))


def _check_recipe(recipe: str, samples: Samples) -> None:
    if recipe == "imagenet" and not isinstance(samples, FileSamples):
        raise ConfigError("data.recipe=imagenet crops from the original image files; this dataset is read as "
                          "decoded arrays: use data.recipe=pad_crop_flip (or leave it unset).")


def build_data(cfg: DataConfig, device: torch.device | str, *, seed: int, rank: int = 0, world_size: int = 1,
               channels_last: bool = False, log: Callable[[str], None] | None = print) -> DataBundle:
    """Read the dataset, split off validation, take the training subset, and build the loaders on the
    pipeline ``cfg.pipeline`` resolves to (:mod:`adakd.data.pipeline`; the choice is logged on rank 0).

    ``seed`` (the run's seed) orders the training batches and draws their augmentation;
    ``cfg.seed`` picks the validation split and the subset. Only the training loader is sharded
    over ``world_size`` ranks; every rank evaluates the whole val / test split.
    """
    device = torch.device(device)
    size = cfg.image_size or (224 if cfg.recipe == "imagenet" else None)
    dataset = open_dataset(cfg.name, cfg.root, cfg.download, size, **cfg.options)
    info = dataset.info
    recipe = cfg.recipe or info.recipe
    if recipe != info.recipe:
        info = replace(info, recipe=recipe)
    train_all, test = dataset.samples("train"), dataset.samples("test")
    _check_recipe(recipe, train_all)
    skipped: list[str] = []
    if cfg.bad_images == "skip":
        train_all, bad_train = drop_unreadable(train_all)
        test, bad_test = drop_unreadable(test)
        skipped = bad_train + bad_test
        if skipped and log is not None and rank == 0:
            log(f"data: left out {len(skipped)} unreadable image(s) (data.bad_images=skip): "
                + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    labels = train_all.labels
    train_idx, val_idx = train_val_split(len(labels), cfg.val_fraction, cfg.seed, labels)
    if cfg.train_subset is not None:
        train_idx = train_idx[balanced_subset(labels[train_idx], cfg.train_subset, cfg.seed)]
    if cfg.drop_last and len(train_idx) // world_size < cfg.batch_size:
        raise ConfigError(f"{len(train_idx)} training samples over {world_size} process(es) do not fill one batch "
                          f"of {cfg.batch_size} with drop_last: lower data.batch_size or set data.drop_last=false.")
    if cfg.test_subset is not None:  # quick experiments only: reported numbers use the whole test split
        test = test.subset(balanced_subset(test.labels, cfg.test_subset, cfg.seed))
    per_image = info.in_channels * info.image_size ** 2
    choice = choose_pipeline(cfg.pipeline, (len(train_idx) + len(val_idx) + len(test)) * per_image, recipe, device,
                             cfg.memory_budget)
    if log is not None and rank == 0:
        log(choice.describe())
    padding = info.crop_padding if cfg.crop_padding is None else cfg.crop_padding
    flip = info.flip if cfg.flip is None else cfg.flip
    norm = {"mean": info.mean, "std": info.std, "device": device, "channels_last": channels_last}
    train_set, val_set = train_all.subset(train_idx), (train_all.subset(val_idx) if len(val_idx) else None)
    if choice.name == "device":
        train: DeviceLoader | StreamLoader = DeviceLoader(
            train_set.decode_all(), train_set.labels, batch_size=cfg.batch_size, shuffle=True, augment=cfg.augment,
            crop_padding=padding, flip=flip, drop_last=cfg.drop_last, seed=seed, rank=rank, world_size=world_size,
            **norm)
        val = None if val_set is None else DeviceLoader(val_set.decode_all(), val_set.labels,
                                                        batch_size=cfg.eval_batch_size, **norm)
        test_loader: DeviceLoader | StreamLoader = DeviceLoader(test.decode_all(), test.labels,
                                                                batch_size=cfg.eval_batch_size, **norm)
    else:
        train_recipe, eval_recipe = recipes(recipe, info.image_size, padding, flip, cfg.augment)
        stream = {"train_recipe": train_recipe, "eval_recipe": eval_recipe, "image_size": info.image_size,
                  "num_workers": default_workers() if cfg.num_workers is None else cfg.num_workers,
                  "prefetch_factor": cfg.prefetch_factor, "seed": seed, **norm}
        train = StreamLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=cfg.drop_last, rank=rank,
                             world_size=world_size, **stream)
        val = None if val_set is None else StreamLoader(val_set, batch_size=cfg.eval_batch_size, **stream)
        test_loader = StreamLoader(test, batch_size=cfg.eval_batch_size, **stream)
    return DataBundle(train=train, val=val, test=test_loader, info=info, num_train=len(train_idx), pipeline=choice,
                      skipped=skipped)
