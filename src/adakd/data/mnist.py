"""MNIST and Fashion-MNIST from their standard IDX files (gzipped or not).

Integrity is checked on the *decompressed* bytes against the published md5s of the raw IDX
files, so a re-compressed copy (e.g. Debian's ``dataset-fashion-mnist``) verifies as well.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from ..registry import DATASETS
from .idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx, read_raw
from .info import DatasetInfo
from .integrity import check_md5, download, md5_bytes, md5_file
from .roots import root_hint
from .source import DatasetSource

_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_COUNTS = {"train": 60_000, "test": 10_000}


class _IdxDataset(DatasetSource):
    """Shared reader of the four-file MNIST layout."""

    native_size = 28
    title: str
    subdirs: tuple[str, ...]
    system_dirs: tuple[Path, ...] = ()
    base_url: str
    #: md5 of the decompressed IDX files (what is verified).
    raw_md5: dict[str, str]
    #: md5 of the published .gz files (what a download is checked against).
    gz_md5: dict[str, str]
    apt_hint: str = ""

    def __init__(self, root=None, download: bool = False, image_size: int | None = None,
                 verify_checksum: bool = True) -> None:
        super().__init__(root, download, image_size)
        self.verify_checksum = verify_checksum

    def candidates(self) -> list[Path]:
        return [self.root, *(self.root / s for s in self.subdirs), *self.system_dirs]

    @staticmethod
    def _find(folder: Path, name: str) -> Path | None:
        for path in (folder / f"{name}.gz", folder / name):
            if path.is_file():
                return path
        return None

    def _locate(self, split: str) -> tuple[Path, Path]:
        for folder in self.candidates():
            found = [self._find(folder, name) for name in _FILES[split]]
            if all(found):
                return found[0], found[1]
        if self.download:
            target = self.root / self.subdirs[0]
            for name in _FILES[split]:
                if self._find(target, name) is None:
                    download(self.base_url + f"{name}.gz", target / f"{name}.gz", self.gz_md5[name])
            image_path, label_path = (self._find(target, name) for name in _FILES[split])
            assert image_path is not None and label_path is not None
            return image_path, label_path
        names = ", ".join(f"{n}.gz" for pair in _FILES.values() for n in pair)
        where = ", ".join(str(p) for p in self.candidates())
        raise DataError(f"{self.title} not found: expected {names} (or the same names without .gz) in one of: "
                        f"{where}. Get them with data.download=true (download=True in Python; from "
                        f"{self.base_url}){self.apt_hint}. "
                        + root_hint())

    def _read(self, path: Path, magic: int) -> np.ndarray:
        fix = f"Delete it and fetch it again (download=True, or {self.base_url})."
        raw = read_raw(path, fix)
        array = parse_idx(raw, path, magic, fix)
        name = path.name.removesuffix(".gz")
        if self.verify_checksum and name in self.raw_md5:
            actual = md5_bytes(raw)
            # A .gz exactly as published also verifies (its own md5), whatever its content's md5 list says.
            if actual != self.raw_md5[name] and not (path.suffix == ".gz" and md5_file(path) == self.gz_md5[name]):
                check_md5(path, actual, self.raw_md5[name], fix + " (The md5 is of the decompressed content.)")
        return array

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self._locate(split)
        images = self._read(image_path, IMAGES_MAGIC)
        labels = self._read(label_path, LABELS_MAGIC)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{image_path}: images of shape {images.shape}, expected [N, 28, 28].")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"{label_path} holds {labels.shape[0]} labels but {image_path} holds "
                            f"{images.shape[0]} images: the files do not belong together.")
        if self.verify_checksum and images.shape[0] != _COUNTS[split]:
            raise DataError(f"{image_path}: {images.shape[0]} images, the standard {split} split has "
                            f"{_COUNTS[split]}.")
        return images[:, None, :, :], labels.astype(np.int64)


@DATASETS.register("fashion_mnist", description="Fashion-MNIST: 28x28 grey, 10 classes, 60k/10k (IDX files)",
                   paper="Xiao, Rasul, Vollgraf. Fashion-MNIST. arXiv:1708.07747, 2017",
                   num_classes=10, image_size=28, in_channels=1)
class FashionMNIST(_IdxDataset):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf, arXiv:1708.07747, 2017).

    Searched in ``root``, ``root/fashion-mnist``, ``root/FashionMNIST/raw`` and Debian's
    ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``). Normalisation
    mean 0.2860, std 0.3530; default augmentation: crop with padding 2, horizontal flip.
    """

    title = "Fashion-MNIST"
    subdirs = ("fashion-mnist", "FashionMNIST/raw")
    system_dirs = (Path("/usr/share/datasets/fashion-mnist"),)
    base_url = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
    apt_hint = ", or `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, into /usr/share/datasets/fashion-mnist)"
    raw_md5 = {"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
               "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
               "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
               "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"}
    gz_md5 = {"train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
              "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
              "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
              "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310"}

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,),
                           ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
                           crop_padding=2, flip=True)


@DATASETS.register("mnist", description="MNIST handwritten digits: 28x28 grey, 10 classes, 60k/10k (IDX files)",
                   paper="LeCun, Bottou, Bengio, Haffner. Gradient-based learning applied to document "
                         "recognition. Proc. IEEE, 1998",
                   num_classes=10, image_size=28, in_channels=1)
class MNIST(_IdxDataset):
    """MNIST (LeCun et al., Proc. IEEE 1998). Searched in ``root``, ``root/mnist``, ``root/MNIST/raw``.

    Normalisation mean 0.1307, std 0.3081; default augmentation: crop with padding 2, no flip.
    """

    title = "MNIST"
    subdirs = ("mnist", "MNIST/raw")
    base_url = "https://ossci-datasets.s3.amazonaws.com/mnist/"
    raw_md5 = {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
               "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
               "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
               "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"}
    gz_md5 = {"train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c"}

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), tuple(str(d) for d in range(10)),
                           crop_padding=2, flip=False)
