"""From a :class:`DataConfig` to device-resident train / val / test loaders."""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..registry import DATASETS
from .config import DataConfig
from .info import DatasetInfo
from .loader import DeviceLoader
from .source import DatasetSource
from .splits import balanced_subset, train_val_split


@dataclass
class DataBundle:
    """The loaders of one run. ``val`` is held out of the training split (None when
    ``val_fraction == 0``); ``num_train`` is the number of training samples actually used."""

    train: DeviceLoader
    val: DeviceLoader | None
    test: DeviceLoader
    info: DatasetInfo
    num_train: int


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


def build_data(cfg: DataConfig, device: torch.device | str, *, seed: int, rank: int = 0, world_size: int = 1,
               channels_last: bool = False) -> DataBundle:
    """Read the dataset, split off validation, take the training subset, and put everything on ``device``.

    ``seed`` (the run's seed) orders the training batches and draws their augmentation;
    ``cfg.seed`` picks the validation split and the subset. Only the training loader is sharded
    over ``world_size`` ranks; every rank evaluates the whole val / test split.
    """
    dataset = open_dataset(cfg.name, cfg.root, cfg.download, cfg.image_size, **cfg.options)
    info = dataset.info
    images, labels = dataset.load("train")
    train_idx, val_idx = train_val_split(len(labels), cfg.val_fraction, cfg.seed, labels)
    if cfg.train_subset is not None:
        train_idx = train_idx[balanced_subset(labels[train_idx], cfg.train_subset, cfg.seed)]
    if cfg.drop_last and len(train_idx) // world_size < cfg.batch_size:
        raise ConfigError(f"{len(train_idx)} training samples over {world_size} process(es) do not fill one batch "
                          f"of {cfg.batch_size} with drop_last: lower data.batch_size or set data.drop_last=false.")
    norm = {"mean": info.mean, "std": info.std, "device": device, "channels_last": channels_last}
    padding = info.crop_padding if cfg.crop_padding is None else cfg.crop_padding
    flip = info.flip if cfg.flip is None else cfg.flip
    train = DeviceLoader(images[train_idx], labels[train_idx], batch_size=cfg.batch_size, shuffle=True,
                         augment=cfg.augment, crop_padding=padding, flip=flip, drop_last=cfg.drop_last,
                         seed=seed, rank=rank, world_size=world_size, **norm)
    val = None
    if len(val_idx):
        val = DeviceLoader(images[val_idx], labels[val_idx], batch_size=cfg.eval_batch_size, **norm)
    test_images, test_labels = dataset.load("test")
    if cfg.test_subset is not None:  # quick experiments only: reported numbers use the whole test split
        keep = balanced_subset(test_labels, cfg.test_subset, cfg.seed)
        test_images, test_labels = test_images[keep], test_labels[keep]
    test = DeviceLoader(test_images, test_labels, batch_size=cfg.eval_batch_size, **norm)
    return DataBundle(train=train, val=val, test=test, info=info, num_train=len(train_idx))
