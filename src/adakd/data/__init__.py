"""Datasets in their standard file formats, device-resident and streamed pipelines, splits and subsets.

    from adakd.data import DataConfig, build_data
    data = build_data(DataConfig(name="fashion_mnist"), "cpu", seed=0)
    for batch in data.train:          # Batch(x, y, index)
        ...

Readers registered in :data:`adakd.registry.DATASETS`: ``mnist``, ``fashion_mnist``,
``cifar10``, ``cifar100``, ``image_folder``, ``tiny_imagenet``.
"""
from __future__ import annotations

from . import cifar, image_folder, mnist, tiny_imagenet  # noqa: F401  (register the readers)
from .build import DataBundle, build_data, load_split, open_dataset
from ..config import DataConfig
from .info import DatasetInfo
from .loader import Batch, DeviceLoader
from .pipeline import PipelineChoice, choose_pipeline
from .splits import balanced_subset, train_val_split
from .stream import StreamLoader
from .transforms import augmentation_params, sample_generator

__all__ = ["DataConfig", "DatasetInfo", "DataBundle", "Batch", "DeviceLoader", "StreamLoader", "PipelineChoice",
           "choose_pipeline", "augmentation_params", "sample_generator", "build_data", "load_split",
           "open_dataset", "train_val_split", "balanced_subset"]
