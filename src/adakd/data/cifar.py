"""CIFAR-10 and CIFAR-100 from the python pickle archives of https://www.cs.toronto.edu/~kriz/cifar.html.

Read from the extracted folder (``root/cifar-10-batches-py``, ``root/cifar-100-python``) or
straight from the ``.tar.gz`` archive in ``root`` (no extraction needed); downloaded there
when missing and ``download=True``. Every file is checked against its published md5 unless
``verify_checksum=False``.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..registry import DATASETS
from .info import DatasetInfo
from .integrity import check_md5, download, md5_bytes, md5_file
from .roots import root_hint
from .safe_pickle import load_array_pickle
from .source import DatasetSource

BASE_URL = "https://www.cs.toronto.edu/~kriz/"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm".split()
)


@dataclass(frozen=True)
class CifarLayout:
    """File names, published md5s and pickle keys of one CIFAR archive."""

    folder: str
    archive: str
    archive_md5: str
    splits: dict[str, tuple[tuple[str, str], ...]]
    meta: tuple[str, str]
    label_key: bytes
    names_key: bytes

    @property
    def url(self) -> str:
        return BASE_URL + self.archive


CIFAR10_LAYOUT = CifarLayout(
    folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz", archive_md5="c58f30108f718f92721af3b95e74349a",
    splits={"train": (("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                      ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                      ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                      ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                      ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
            "test": (("test_batch", "40351d587109b95175f43aff81a1287e"),)},
    meta=("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"), label_key=b"labels", names_key=b"label_names",
)
CIFAR100_LAYOUT = CifarLayout(
    folder="cifar-100-python", archive="cifar-100-python.tar.gz", archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    splits={"train": (("train", "16019d7e3df5f24257cddd939b257f8d"),),
            "test": (("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),)},
    meta=("meta", "7973b15100ade9c7d40fb424638fde48"), label_key=b"fine_labels", names_key=b"fine_label_names",
)


class _Cifar(DatasetSource):
    """Shared reader of the two CIFAR python archives."""

    native_size = 32
    layout: CifarLayout

    def __init__(self, root=None, download: bool = False, image_size: int | None = None,
                 verify_checksum: bool = True) -> None:
        super().__init__(root, download, image_size)
        self.verify_checksum = verify_checksum

    @property
    def _fix(self) -> str:
        return (f"Delete it and fetch {self.layout.url} again (download=True), then keep it at "
                f"{self.root / self.layout.archive}.")

    def _needed(self, split: str) -> list[tuple[str, str]]:
        return [*self.layout.splits[split], self.layout.meta]

    def _read_folder(self, folder: Path, split: str) -> dict[str, bytes] | None:
        needed = self._needed(split)
        if not all((folder / name).is_file() for name, _ in needed):
            return None
        out = {}
        for name, md5 in needed:
            data = (folder / name).read_bytes()
            if self.verify_checksum:
                check_md5(folder / name, md5_bytes(data), md5, self._fix)
            out[name] = data
        return out

    def _read_archive(self, archive: Path, split: str) -> dict[str, bytes]:
        if self.verify_checksum:
            check_md5(archive, md5_file(archive), self.layout.archive_md5, self._fix)
        wanted = {f"{self.layout.folder}/{name}": name for name, _ in self._needed(split)}
        out: dict[str, bytes] = {}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    name = wanted.get(member.name.removeprefix("./"))
                    if name is not None and member.isfile():
                        handle = tar.extractfile(member)
                        assert handle is not None
                        out[name] = handle.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{archive} is not a readable .tar.gz archive ({exc}). {self._fix}") from exc
        missing = sorted(set(wanted.values()) - set(out))
        if missing:
            raise DataError(f"{archive} lacks {', '.join(f'{self.layout.folder}/{m}' for m in missing)}: "
                            f"it is not the CIFAR python archive. {self._fix}")
        return out

    def _files(self, split: str) -> dict[str, bytes]:
        folders = [self.root / self.layout.folder, self.root]
        for folder in folders:
            found = self._read_folder(folder, split)
            if found is not None:
                return found
        archive = self.root / self.layout.archive
        if not archive.is_file() and self.download:
            download(self.layout.url, archive, self.layout.archive_md5 if self.verify_checksum else None)
        if archive.is_file():
            return self._read_archive(archive, split)
        names = ", ".join(name for name, _ in self._needed(split))
        raise DataError(
            f"{self.info.name} not found: expected {archive} (the python version, {self.layout.url}) or its "
            f"extracted folder {folders[0]} with {names}. Get it with data.download=true (download=True in Python), "
            f"or download {self.layout.url} by hand into {self.root}. " + root_hint()
        )

    def _unpickle(self, name: str, data: bytes) -> dict[Any, Any]:
        try:
            obj = load_array_pickle(data)
        except Exception as exc:  # any unpickling failure means a corrupt or foreign file
            raise DataError(f"{self.layout.folder}/{name} is not a CIFAR pickle ({exc}). {self._fix}") from exc
        if not isinstance(obj, dict):
            raise DataError(f"{self.layout.folder}/{name} holds a {type(obj).__name__}, not a dict. {self._fix}")
        return obj

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        files = self._files(split)
        meta = self._unpickle(self.layout.meta[0], files[self.layout.meta[0]])
        names = meta.get(self.layout.names_key)
        if names is None or len(names) != self.info.num_classes:
            raise DataError(f"{self.layout.folder}/{self.layout.meta[0]} does not list {self.info.num_classes} "
                            f"classes under {self.layout.names_key!r}. {self._fix}")
        images, labels = [], []
        for name, _ in self.layout.splits[split]:
            batch = self._unpickle(name, files[name])
            try:
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                label = np.asarray(batch[self.layout.label_key], dtype=np.int64)
            except KeyError as exc:
                raise DataError(f"{self.layout.folder}/{name} lacks the key {exc.args[0]!r}. {self._fix}") from exc
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or label.shape != (data.shape[0],):
                raise DataError(f"{self.layout.folder}/{name}: data {data.shape} and labels {label.shape}, "
                                f"expected [N, 3072] and [N]. {self._fix}")
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(label)
        return np.concatenate(images), np.concatenate(labels)


@DATASETS.register("cifar10", description="CIFAR-10: 32x32 colour, 10 classes, 50k/10k (python archive)",
                   paper="Krizhevsky. Learning multiple layers of features from tiny images. Tech. report, 2009",
                   num_classes=10, image_size=32, in_channels=3)
class CIFAR10(_Cifar):
    """CIFAR-10 (Krizhevsky, tech. report 2009). Mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616);
    default augmentation: crop with padding 4, horizontal flip."""

    layout = CIFAR10_LAYOUT

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           CIFAR10_CLASSES, crop_padding=4, flip=True)


@DATASETS.register("cifar100", description="CIFAR-100: 32x32 colour, 100 classes, 50k/10k (python archive)",
                   paper="Krizhevsky. Learning multiple layers of features from tiny images. Tech. report, 2009",
                   num_classes=100, image_size=32, in_channels=3)
class CIFAR100(_Cifar):
    """CIFAR-100, fine labels (Krizhevsky, tech. report 2009). Mean (0.5071, 0.4867, 0.4408), std
    (0.2675, 0.2565, 0.2761); default augmentation: crop with padding 4, horizontal flip (the KD recipe)."""

    layout = CIFAR100_LAYOUT

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761),
                           CIFAR100_CLASSES, crop_padding=4, flip=True)
