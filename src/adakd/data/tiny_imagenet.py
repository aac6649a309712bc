"""Tiny-ImageNet-200 in its distributed layout (cs231n, Stanford)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from ..registry import DATASETS
from .image_files import decode_images, is_image
from .info import DatasetInfo
from .roots import root_hint
from .samples import FileSamples
from .source import DatasetSource

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


@DATASETS.register("tiny_imagenet", description="Tiny-ImageNet-200: 64x64 colour, 200 classes, 100k/10k",
                   paper="Le, Yang. Tiny ImageNet visual recognition challenge. CS231N, 2015",
                   num_classes=200, image_size=64, in_channels=3)
class TinyImageNet(DatasetSource):
    """Tiny-ImageNet (Le & Yang, CS231N 2015): ``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
    ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt`` (file, wnid, box). The labelled
    validation set serves as the test split (the official test set has no labels). Classes are
    the sorted wnids; names from ``words.txt`` when present. Looked for in ``root/tiny-imagenet-200``
    or ``root``. Mean (0.4802, 0.4481, 0.3975), std (0.2302, 0.2265, 0.2262); default
    augmentation: crop with padding ``image_size // 8`` (8 at 64x64), horizontal flip. ``image_size``
    resizes (e.g. 32 for CIFAR-sized models).
    """

    def __init__(self, root=None, download: bool = False, image_size: int | None = None) -> None:
        super().__init__(root, download, image_size)
        self.size = image_size or 64
        candidates = [self.root / "tiny-imagenet-200", self.root]
        found = next((c for c in candidates if (c / "wnids.txt").is_file()), None)
        if found is None:
            raise DataError(
                f"Tiny-ImageNet not found: expected wnids.txt, train/<wnid>/images/ and val/images/ + "
                f"val/val_annotations.txt in {candidates[0]} (or {candidates[1]}). Download {URL} and unzip it "
                f"into {self.root}. " + root_hint())
        self.folder = found
        self.wnids = tuple(sorted({w.strip() for w in (found / "wnids.txt").read_text().split() if w.strip()}))
        if not self.wnids:
            raise DataError(f"{found / 'wnids.txt'} lists no classes.")
        words = {}
        if (found / "words.txt").is_file():
            for line in (found / "words.txt").read_text(encoding="utf-8", errors="replace").splitlines():
                wnid, _, text = line.partition("\t")
                words[wnid.strip()] = text.strip()
        self.class_names = tuple(words.get(w) or w for w in self.wnids)

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("tiny_imagenet", len(self.wnids), 3, self.size, (0.4802, 0.4481, 0.3975),
                           (0.2302, 0.2265, 0.2262), self.class_names, crop_padding=self.size // 8, flip=True)

    def _train_listing(self) -> tuple[list[Path], list[int]]:
        paths: list[Path] = []
        labels: list[int] = []
        for label, wnid in enumerate(self.wnids):
            folder = self.folder / "train" / wnid / "images"
            if not folder.is_dir():
                raise DataError(f"{folder} is missing (class {wnid} of wnids.txt); the download is incomplete.")
            files = sorted(p for p in folder.iterdir() if is_image(p))
            paths += files
            labels += [label] * len(files)
        return paths, labels

    def _val_listing(self) -> tuple[list[Path], list[int]]:
        notes = self.folder / "val" / "val_annotations.txt"
        if not notes.is_file():
            raise DataError(f"{notes} is missing; it labels the validation images (the test split).")
        index = {w: i for i, w in enumerate(self.wnids)}
        paths: list[Path] = []
        labels: list[int] = []
        for number, line in enumerate(notes.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise DataError(f"{notes}:{number}: expected 'file<TAB>wnid<TAB>box', with a wnid of wnids.txt; "
                                f"got {line!r}.")
            path = self.folder / "val" / "images" / fields[0]
            if not path.is_file():
                raise DataError(f"{path} (listed in {notes}:{number}) is missing; the download is incomplete.")
            paths.append(path)
            labels.append(index[fields[1]])
        return paths, labels

    def samples(self, split: str) -> FileSamples:
        """``split`` as files, decoded on demand (the stream pipeline)."""
        paths, labels = self._train_listing() if split == "train" else self._val_listing()
        if not paths:
            raise DataError(f"Tiny-ImageNet {split}: no images found under {self.folder}.")
        return FileSamples(paths, np.asarray(labels, dtype=np.int64), self.size)

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        files = self.samples(split)
        return decode_images(files.paths, self.size), files.labels
