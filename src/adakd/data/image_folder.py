"""Any classification dataset stored as ``root/train/<class>/*.png|jpg`` and ``root/test|val/<class>/...``."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .image_files import decode_images, image_size_of, is_image
from .imagenet_val import find_ground_truth, val_labels
from .info import DatasetInfo
from .roots import root_hint
from .samples import FileSamples
from .source import DatasetSource

#: ImageNet statistics (the usual choice for natural images when a folder's own are unknown).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _stats(values: Sequence[float] | None, default: tuple[float, ...], channels: int, what: str) -> tuple[float, ...]:
    if values is None:
        return default if channels == 3 else (sum(default) / 3,)
    values = tuple(float(v) for v in values)
    if len(values) != channels:
        raise ConfigError(f"data.options.{what} needs {channels} values (one per channel), got {len(values)}.")
    return values


@DATASETS.register("image_folder", description="images in root/train/<class>/ and root/test|val/<class>/, "
                   "resized to data.image_size and held in memory")
class ImageFolder(DatasetSource):
    """A folder of class sub-folders. Classes are the sorted sub-folder names of ``root/train``;
    the test split is ``root/test`` (or ``root/val``). Images are resized (bilinear) to
    ``image_size`` (default: the size of the first image, which must be square) and cached in
    memory as uint8. Options: ``grayscale`` (1 channel), ``mean``/``std`` (default: ImageNet's,
    (0.485, 0.456, 0.406)/(0.229, 0.224, 0.225)). Default augmentation: crop with padding
    ``image_size // 8``, horizontal flip (``data.recipe=imagenet``: the ImageNet recipe, streamed).

    ImageNet's layout is one: ``train/<wnid>/*.JPEG`` and either ``val/<wnid>/*.JPEG`` or the
    validation images flat in ``val/`` with a ground-truth file (``LOC_val_solution.csv``, ... see
    :mod:`adakd.data.imagenet_val`; option ``val_labels`` names it).
    """

    def __init__(self, root=None, download: bool = False, image_size: int | None = None, grayscale: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 val_labels: str | None = None) -> None:
        super().__init__(root, download, image_size)
        self.grayscale = grayscale
        self.val_labels = val_labels
        train = self.root / "train"
        if not train.is_dir():
            raise DataError(f"image folder not found: expected {train}/<class>/<image files> and "
                            f"{self.root}/test/<class>/... (or val/). " + root_hint())
        self.classes = tuple(sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")))
        if not self.classes:
            raise DataError(f"{train} has no class sub-folders: put each class's images in {train}/<class>/.")
        channels = 1 if grayscale else 3
        self._mean = _stats(mean, IMAGENET_MEAN, channels, "mean")
        self._std = _stats(std, IMAGENET_STD, channels, "std")
        self._size: int | None = image_size

    def _split_dir(self, split: str) -> Path:
        if split == "train":
            return self.root / "train"
        for name in ("test", "val"):
            if (self.root / name).is_dir():
                return self.root / name
        raise DataError(f"no test split: expected {self.root}/test/<class>/... or {self.root}/val/<class>/....")

    def _listing(self, split: str) -> tuple[list[Path], np.ndarray]:
        folder = self._split_dir(split)
        index = {name: i for i, name in enumerate(self.classes)}
        paths, labels = [], []
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if split != "train" and not subs:
            return self._flat_listing(folder, index)
        for sub in subs:
            if sub.name not in index:
                raise DataError(f"{sub}: class {sub.name!r} does not exist in {self.root / 'train'}; "
                                "every test class needs training images.")
            files = sorted(p for p in sub.iterdir() if is_image(p))
            paths += files
            labels += [index[sub.name]] * len(files)
        if not paths:
            raise DataError(f"{folder} holds no images ({', '.join(('.png', '.jpg'))}, ...) in class sub-folders.")
        return paths, np.asarray(labels, dtype=np.int64)

    def _flat_listing(self, folder: Path, index: dict[str, int]) -> tuple[list[Path], np.ndarray]:
        """ImageNet's validation images flat in ``folder``, labelled by a ground-truth file."""
        files = sorted(p for p in folder.iterdir() if is_image(p))
        truth = find_ground_truth(self.root, self.val_labels)
        if not files or truth is None:
            raise DataError(f"{folder} has no class sub-folders{'' if files else ' and no images'}: put each class's "
                            f"images in {folder}/<class>/, or (ImageNet) keep them flat there with a ground-truth "
                            "file such as LOC_val_solution.csv in the root (data.options.val_labels=PATH).")
        return files, np.asarray(val_labels(truth, files, index), dtype=np.int64)

    def samples(self, split: str) -> FileSamples:
        """``split`` as files, decoded on demand (the stream pipeline)."""
        paths, labels = self._listing("train" if split == "train" else "test")
        return FileSamples(paths, labels, self.size, self.grayscale)

    @property
    def size(self) -> int:
        if self._size is None:
            paths, _ = self._listing("train")
            self._size = image_size_of(paths[0])
        return self._size

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("image_folder", len(self.classes), 1 if self.grayscale else 3, self.size,
                           self._mean, self._std, self.classes, crop_padding=self.size // 8, flip=True)

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        paths, labels = self._listing(split)
        return decode_images(paths, self.size, self.grayscale), labels
