"""What a model and the pipeline need to know about a dataset."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    ``mean``/``std`` are per-channel statistics in [0, 1] pixel units; the loader computes
    ``x = (pixel / 255 - mean) / std``. ``crop_padding`` and ``flip`` are the default training
    augmentation: a random ``image_size`` crop of the image zero-padded by ``crop_padding`` on
    each side, and a random horizontal flip. Defaults: padding 4 for 32x32 (the CIFAR recipe),
    2 for 28x28 (Fashion-)MNIST, ``image_size // 8`` for image folders; flip everywhere except
    MNIST (mirrored digits are other symbols). ``recipe`` is the default augmentation recipe:
    ``pad_crop_flip`` (the above) or ``imagenet`` (RandomResizedCrop + flip; Resize + CenterCrop to
    evaluate; streamed from the original files, see :mod:`adakd.data.transforms`).
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    crop_padding: int = 4
    flip: bool = True
    recipe: str = "pad_crop_flip"

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"{self.name}: mean/std need {self.in_channels} values (one per channel)")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")
