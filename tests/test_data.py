"""The data package: readers of the standard formats, splits, batched augmentation, the device loader."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from adakd.data import (Batch, DataConfig, DeviceLoader, balanced_subset, build_data, load_split, open_dataset,
                        train_val_split)
from adakd.data import cifar as cifar_module
from adakd.data.augment import crop_and_flip, crop_with_padding, flip, normalization, normalize
from adakd.data.mnist import FashionMNIST
from adakd.data.roots import resolve_root
from adakd.errors import CheckpointError, ConfigError, DataError
from adakd.registry import DATASETS

HERE = Path(__file__).resolve()
FASHION_CANDIDATES = [HERE.parents[2] / "shared" / "data" / "fashion-mnist", HERE.parents[1] / "shared" / "data" /
                      "fashion-mnist", Path("/work/shared/data/fashion-mnist")]
FASHION = next((p for p in FASHION_CANDIDATES if (p / "train-images-idx3-ubyte.gz").is_file()), None)
needs_fashion = pytest.mark.skipif(FASHION is None, reason="the shared Fashion-MNIST files are not on this machine")


# ----------------------------------------------------------------------------------------------- helpers
def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images, 0x803)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 0x801)))
        out[prefix] = (images, labels)
    return out


def cifar_batch(rng: np.random.Generator, n: int, label_key: bytes, classes: int) -> dict:
    return {b"batch_label": b"testing batch", label_key: rng.integers(0, classes, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}


def write_cifar(tmp: Path, kind: str = "cifar10", as_archive: bool = True, seed: int = 0,
                train_size: int = 4) -> dict[str, dict]:
    """A tiny CIFAR python archive in the exact published format; returns the batches written."""
    rng = np.random.default_rng(seed)
    layout = cifar_module.CIFAR10_LAYOUT if kind == "cifar10" else cifar_module.CIFAR100_LAYOUT
    classes = 10 if kind == "cifar10" else 100
    files: dict[str, bytes] = {}
    batches: dict[str, dict] = {}
    for split, sizes in (("train", train_size), ("test", 6)):
        for name, _ in layout.splits[split]:
            batch = cifar_batch(rng, sizes + (2 if kind == "cifar100" else 0), layout.label_key, classes)
            batches[name] = batch
            files[name] = pickle.dumps(batch, protocol=2)
    names = cifar_module.CIFAR10_CLASSES if kind == "cifar10" else cifar_module.CIFAR100_CLASSES
    files[layout.meta[0]] = pickle.dumps({layout.names_key: [n.encode() for n in names]}, protocol=2)
    tmp.mkdir(parents=True, exist_ok=True)
    if as_archive:
        with tarfile.open(tmp / layout.archive, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"{layout.folder}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        (tmp / layout.folder).mkdir()
        for name, data in files.items():
            (tmp / layout.folder / name).write_bytes(data)
    return batches


def save_image(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ----------------------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def fashion():
    if FASHION is None:
        pytest.skip("the shared Fashion-MNIST files are not on this machine")
    return {split: load_split("fashion_mnist", FASHION, split) for split in ("train", "test")}


def test_real_fashion_mnist_shapes_counts_and_labels(fashion):
    for split, n in (("train", 60_000), ("test", 10_000)):
        images, labels, info = fashion[split]
        assert images.shape == (n, 1, 28, 28) and images.dtype == np.uint8
        assert labels.dtype == np.int64 and labels.min() == 0 and labels.max() == 9
        assert np.bincount(labels).tolist() == [n // 10] * 10  # Fashion-MNIST is exactly balanced
    assert info.num_classes == 10 and info.in_channels == 1 and info.image_size == 28
    assert info.mean == (0.2860,) and info.std == (0.3530,) and info.crop_padding == 2 and info.flip
    # The published statistics are those of the training pixels.
    counts = sum(np.bincount(chunk.ravel(), minlength=256) for chunk in np.array_split(fashion["train"][0], 10))
    counts = counts.astype(np.float64)
    values = np.arange(256) / 255.0
    mean = (counts * values).sum() / counts.sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    assert abs(mean - 0.2860) < 5e-4 and abs(std - 0.3530) < 5e-4


@needs_fashion
def test_fashion_mnist_found_in_subfolder_and_via_env(monkeypatch, tmp_path):
    monkeypatch.setattr(FashionMNIST, "system_dirs", ())
    ds = open_dataset("fashion_mnist", FASHION.parent)  # root/fashion-mnist
    assert ds._locate("test")[0].parent == FASHION
    monkeypatch.setenv("ADAKD_DATA", str(FASHION))
    assert open_dataset("fashion_mnist")._locate("test")[0].parent == FASHION


def test_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAKD_DATA", str(tmp_path / "env"))
    assert resolve_root(tmp_path / "given") == tmp_path / "given"
    assert resolve_root(None) == tmp_path / "env"
    monkeypatch.delenv("ADAKD_DATA")
    assert resolve_root(None) == Path.home() / ".cache" / "adakd" / "data"


def test_missing_fashion_mnist_names_files_places_and_fixes(monkeypatch, tmp_path):
    monkeypatch.setattr(FashionMNIST, "system_dirs", (tmp_path / "nowhere",))
    with pytest.raises(DataError) as err:
        load_split("fashion_mnist", tmp_path, "train")
    message = str(err.value)
    for part in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", str(tmp_path / "FashionMNIST/raw"),
                 "download=True", "dataset-fashion-mnist", "ADAKD_DATA"):
        assert part in message


# ----------------------------------------------------------------------------------------------- IDX files
def test_idx_round_trip_gzipped_and_plain(tmp_path):
    written = write_idx_set(tmp_path)
    images, labels, _ = load_split("mnist", tmp_path, "train", verify_checksum=False)
    np.testing.assert_array_equal(images[:, 0], written["train"][0])
    np.testing.assert_array_equal(labels, written["train"][1].astype(np.int64))
    for path in tmp_path.glob("t10k-*.gz"):  # the same files uncompressed
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    images, labels, _ = load_split("mnist", tmp_path, "test", verify_checksum=False)
    np.testing.assert_array_equal(images[:, 0], written["t10k"][0])


@pytest.mark.parametrize("damage", ["bad_gzip", "cut_gzip", "wrong_magic", "truncated", "count_mismatch"])
def test_corrupt_idx_files_raise_data_error_naming_the_file(tmp_path, damage):
    write_idx_set(tmp_path)
    target = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    if damage == "bad_gzip":
        target.write_bytes(b"this is not gzip at all" * 10)
    elif damage == "cut_gzip":
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    elif damage == "wrong_magic":
        target.write_bytes(gzip.compress(struct.pack(">I", 0x801) + raw[4:]))
    elif damage == "truncated":
        target.write_bytes(gzip.compress(raw[:-100]))
    else:
        target = tmp_path / "train-labels-idx1-ubyte.gz"
        target.write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8), 0x801)))
    with pytest.raises(DataError) as err:
        load_split("mnist", tmp_path, "train", verify_checksum=False)
    assert target.name in str(err.value)


def test_mnist_download_into_root(tmp_path, monkeypatch):
    from adakd.data.integrity import md5_file
    from adakd.data.mnist import MNIST

    written = write_idx_set(tmp_path / "mirror")
    monkeypatch.setattr(MNIST, "base_url", (tmp_path / "mirror").as_uri() + "/")
    monkeypatch.setattr(MNIST, "gz_md5", {p.name[:-3]: md5_file(p) for p in (tmp_path / "mirror").iterdir()})
    images, _, _ = load_split("mnist", tmp_path / "root", "test", download=True, verify_checksum=False)
    np.testing.assert_array_equal(images[:, 0], written["t10k"][0])
    assert sorted(p.name for p in (tmp_path / "root" / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_idx_md5_mismatch_is_a_data_error(tmp_path):
    write_idx_set(tmp_path)
    with pytest.raises(DataError, match="md5"):
        load_split("fashion_mnist", tmp_path, "test")


# ----------------------------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
@pytest.mark.parametrize("as_archive", [True, False])
def test_cifar_round_trip(tmp_path, kind, as_archive):
    batches = write_cifar(tmp_path, kind, as_archive)
    layout = cifar_module.CIFAR10_LAYOUT if kind == "cifar10" else cifar_module.CIFAR100_LAYOUT
    for split in ("train", "test"):
        images, labels, info = load_split(kind, tmp_path, split, verify_checksum=False)
        names = [n for n, _ in layout.splits[split]]
        want_x = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
        want_y = np.concatenate([batches[n][layout.label_key] for n in names])
        np.testing.assert_array_equal(images, want_x)
        np.testing.assert_array_equal(labels, want_y)
    assert info.num_classes == (10 if kind == "cifar10" else 100) and info.image_size == 32
    assert info.crop_padding == 4 and info.flip
    if kind == "cifar100":
        assert info.mean == (0.5071, 0.4867, 0.4408) and info.std == (0.2675, 0.2565, 0.2761)
    else:
        assert info.mean == (0.4914, 0.4822, 0.4465) and info.std == (0.2470, 0.2435, 0.2616)


def test_cifar_first_pixel_layout_is_channel_major(tmp_path):
    batches = write_cifar(tmp_path, "cifar10")
    images, _, _ = load_split("cifar10", tmp_path, "train", verify_checksum=False)
    row = batches["data_batch_1"][b"data"][0]  # 1024 red, 1024 green, 1024 blue, each row-major 32x32
    assert images[0, 1, 2, 3] == row[1024 + 2 * 32 + 3]


@pytest.mark.parametrize("as_archive", [True, False])
def test_cifar_md5_mismatch_is_a_data_error(tmp_path, as_archive):
    write_cifar(tmp_path, "cifar10", as_archive)
    with pytest.raises(DataError, match="md5"):
        load_split("cifar10", tmp_path, "train")


def test_cifar_missing_names_url_and_place(tmp_path):
    with pytest.raises(DataError) as err:
        load_split("cifar100", tmp_path, "train")
    message = str(err.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert str(tmp_path / "cifar-100-python.tar.gz") in message and "download=True" in message


def test_cifar_download_is_atomic_and_failure_leaves_nothing(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    write_cifar(source, "cifar10")
    monkeypatch.setattr(cifar_module, "BASE_URL", source.as_uri() + "/")
    root = tmp_path / "root"
    images, _, _ = load_split("cifar10", root, "test", download=True, verify_checksum=False)
    assert images.shape == (6, 3, 32, 32)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]
    # With the checksum on, the download is checked against the published md5 and discarded.
    with pytest.raises(DataError, match="md5"):
        load_split("cifar10", tmp_path / "root2", "test", download=True)
    assert list((tmp_path / "root2").iterdir()) == []
    monkeypatch.setattr(cifar_module, "BASE_URL", (tmp_path / "no-such-dir").as_uri() + "/")
    with pytest.raises(DataError, match="by hand") as err:
        load_split("cifar10", tmp_path / "root3", "test", download=True)
    assert str(tmp_path / "root3" / "cifar-10-python.tar.gz") in str(err.value)
    assert list((tmp_path / "root3").iterdir()) == []


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    write_cifar(tmp_path, "cifar10", as_archive=False)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing"):
        load_split("cifar10", tmp_path, "test", verify_checksum=False)


# ----------------------------------------------------------------------------------------------- image folders
def test_image_folder_reads_sorted_classes_and_resizes(tmp_path):
    rng = np.random.default_rng(0)
    exact = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    save_image(tmp_path / "train" / "zebra" / "a.png", exact)
    save_image(tmp_path / "train" / "zebra" / "b.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    save_image(tmp_path / "train" / "ant" / "c.png", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    save_image(tmp_path / "val" / "zebra" / "d.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    images, labels, info = load_split("image_folder", tmp_path, "train", image_size=8)
    assert info.class_names == ("ant", "zebra") and info.num_classes == 2 and info.in_channels == 3
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(images[1], exact.transpose(2, 0, 1))  # PNG at its size: lossless, no resize
    test_images, test_labels, _ = load_split("image_folder", tmp_path, "test", image_size=8)
    assert test_images.shape == (1, 3, 8, 8) and test_labels.tolist() == [1]
    grey, _, grey_info = load_split("image_folder", tmp_path, "train", image_size=4, grayscale=True)
    assert grey.shape == (3, 1, 4, 4) and grey_info.in_channels == 1 and len(grey_info.mean) == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="train"):
        load_split("image_folder", tmp_path, "train")
    save_image(tmp_path / "train" / "a" / "x.png", np.zeros((4, 4), np.uint8))
    save_image(tmp_path / "test" / "b" / "y.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="'b'"):
        load_split("image_folder", tmp_path, "test")
    with pytest.raises(ConfigError, match="grayscale"):
        load_split("image_folder", tmp_path, "train", colour="yes")


def test_tiny_imagenet_layout(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01\tgoldfish\nn02\tshark\nn03\tray\nn99\tunused\n")
    kept = {}
    for wnid in wnids:
        for k in range(2):
            array = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            ext = "PNG" if k == 0 else "JPEG"
            save_image(root / "train" / wnid / "images" / f"{wnid}_{k}.{ext}", array)
            kept[wnid] = array if k == 0 else kept[wnid]
    notes = []
    for k, wnid in enumerate(["n03", "n01"]):
        save_image(root / "val" / "images" / f"val_{k}.PNG", kept[wnid])
        notes.append(f"val_{k}.PNG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(notes) + "\n")
    images, labels, info = load_split("tiny_imagenet", tmp_path, "train")
    assert info.num_classes == 3 and info.image_size == 64 and info.crop_padding == 8
    assert info.class_names == ("goldfish", "shark", "ray")  # sorted wnids n01, n02, n03
    assert images.shape == (6, 3, 64, 64) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(images[0], kept["n01"].transpose(2, 0, 1))
    test_images, test_labels, _ = load_split("tiny_imagenet", tmp_path, "test")
    assert test_labels.tolist() == [2, 0]
    np.testing.assert_array_equal(test_images[0], kept["n03"].transpose(2, 0, 1))
    small, _, small_info = load_split("tiny_imagenet", tmp_path, "test", image_size=32)
    assert small.shape == (2, 3, 32, 32) and small_info.crop_padding == 4
    (root / "val" / "val_annotations.txt").write_text("val_0.PNG\tn77\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="n77|wnid"):
        load_split("tiny_imagenet", tmp_path, "test")
    with pytest.raises(DataError, match="tiny-imagenet-200.zip"):
        load_split("tiny_imagenet", tmp_path / "empty", "train")


def test_registry_and_option_errors(tmp_path):
    assert {"fashion_mnist", "mnist", "cifar10", "cifar100", "image_folder", "tiny_imagenet"} <= set(DATASETS.names())
    with pytest.raises(ConfigError, match="verify_checksum"):
        open_dataset("cifar10", tmp_path, verify=False)
    with pytest.raises(ConfigError, match="image_size"):
        open_dataset("cifar10", tmp_path, image_size=64)
    with pytest.raises(ConfigError, match="split"):
        open_dataset("mnist", tmp_path).load("val")


# ----------------------------------------------------------------------------------------------- augmentation
def numpy_crop(images: np.ndarray, offsets: np.ndarray, p: int) -> np.ndarray:
    padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)))
    h, w = images.shape[2:]
    return np.stack([padded[b, :, t:t + h, l:l + w] for b, (t, l) in enumerate(offsets)])


@pytest.mark.parametrize("padding", [1, 2, 4])
def test_crop_matches_numpy_reference(padding):
    rng = np.random.default_rng(padding)
    images = rng.integers(1, 256, (16, 3, 9, 7), dtype=np.uint8)
    offsets = rng.integers(0, 2 * padding + 1, (16, 2))
    out = crop_with_padding(torch.from_numpy(images), torch.from_numpy(offsets), padding)
    assert out.shape == images.shape and out.dtype == torch.uint8
    np.testing.assert_array_equal(out.numpy(), numpy_crop(images, offsets, padding))


def test_crop_and_flip_in_one_gather_matches_numpy_reference():
    rng = np.random.default_rng(9)
    images = rng.integers(1, 256, (32, 3, 8, 8), dtype=np.uint8)
    offsets = rng.integers(0, 9, (32, 2))
    flips = rng.random(32) < 0.5
    want = numpy_crop(images, offsets, 4)
    want[flips] = want[flips][..., ::-1]
    out = crop_and_flip(torch.from_numpy(images), torch.from_numpy(offsets), torch.from_numpy(flips), 4)
    np.testing.assert_array_equal(out.numpy(), want)
    only_flip = crop_and_flip(torch.from_numpy(images), None, torch.from_numpy(flips), 0)
    np.testing.assert_array_equal(only_flip.numpy()[flips], images[flips][..., ::-1])
    np.testing.assert_array_equal(only_flip.numpy()[~flips], images[~flips])


def test_crop_zero_padding_lands_where_the_offset_puts_it():
    images = torch.full((2, 1, 6, 6), 7, dtype=torch.uint8)
    out = crop_with_padding(images, torch.tensor([[0, 0], [4, 3]]), 2)
    # offset (0, 0): two zero rows on top, two zero columns on the left, image below/right.
    assert (out[0, 0, :2] == 0).all() and (out[0, 0, :, :2] == 0).all() and (out[0, 0, 2:, 2:] == 7).all()
    # offset (4, 3): image shifted up by 2 and left by 1: zeros in the last 2 rows and last column.
    assert (out[1, 0, 4:] == 0).all() and (out[1, 0, :, 5:] == 0).all() and (out[1, 0, :4, :5] == 7).all()
    centred = crop_with_padding(images, torch.tensor([[2, 2], [2, 2]]), 2)
    assert torch.equal(centred, images)


def test_flip_mirrors_only_masked_images():
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.uint8).view(2, 1, 2, 3)
    out = flip(images, torch.tensor([True, False]))
    np.testing.assert_array_equal(out[0].numpy(), images[0].numpy()[:, :, ::-1])
    assert torch.equal(out[1], images[1])


def test_normalize_values():
    pixels = torch.tensor([0, 51, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    scale, shift = normalization(mean, std)
    out = normalize(pixels, scale, shift, channels_last=True)
    want = (np.array([0, 51, 128, 255], np.float64).reshape(1, 1, 2, 2) / 255.0
            - np.array(mean).reshape(1, 3, 1, 1)) / np.array(std).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=1e-6)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------- loader
def small_data(n: int = 50, classes: int = 5, size: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, (n, 2, size, size), dtype=np.uint8), np.arange(n) % classes


def make_loader(images, labels, **kw) -> DeviceLoader:
    args = dict(mean=(0.5, 0.5), std=(0.25, 0.25), batch_size=8, shuffle=True, augment=True, crop_padding=2,
                flip=True, drop_last=True, seed=3)
    args.update(kw)
    return DeviceLoader(images, labels, **args)


def collect(loader) -> list[Batch]:
    return list(loader)


def assert_same_batches(a: list[Batch], b: list[Batch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.x, y.x) and torch.equal(x.y, y.y) and torch.equal(x.index, y.index)


def test_loader_is_deterministic_and_epochs_differ():
    images, labels = small_data()
    first, second = make_loader(images, labels), make_loader(images, labels)
    assert len(first) == 50 // 8
    epoch0 = collect(first)
    assert_same_batches(epoch0, collect(second))
    assert first.epoch == 1 and first.position == 0  # a finished pass moves on to the next epoch
    epoch1 = collect(first)
    assert not torch.equal(epoch0[0].index, epoch1[0].index)
    other_seed = collect(make_loader(images, labels, seed=4))
    assert not torch.equal(epoch0[0].index, other_seed[0].index)
    first.set_epoch(0)
    assert_same_batches(epoch0, collect(first))


def test_loader_batches_are_labelled_augmented_views_of_their_rows():
    images, labels = small_data()
    loader = make_loader(images, labels, drop_last=False)
    seen = []
    for batch in loader:
        assert batch.x.dtype == torch.float32 and batch.index.dtype == torch.int64
        np.testing.assert_array_equal(batch.y.numpy(), labels[batch.index.numpy()])
        pixels = np.rint(batch.x.numpy() * 0.25 * 255 + 0.5 * 255).astype(np.int64)  # undo normalisation
        for sample, row in zip(pixels, batch.index.numpy()):
            candidates = [numpy_crop(img[None], np.array([[t, l]]), 2)[0] for t in range(5) for l in range(5)
                          for img in (images[row], images[row][:, :, ::-1])]
            assert any(np.array_equal(sample, c) for c in candidates)
        seen += batch.index.tolist()
    assert sorted(seen) == list(range(50))  # one epoch without drop_last: every row once


def test_loader_resumes_mid_epoch_with_the_next_batch():
    images, labels = small_data()
    reference = make_loader(images, labels)
    reference.set_epoch(2)
    full = collect(reference)
    interrupted = make_loader(images, labels)
    interrupted.set_epoch(2)
    iterator = iter(interrupted)
    for _ in range(3):
        next(iterator)
    state = interrupted.state_dict()
    assert state["epoch"] == 2 and state["position"] == 3
    resumed = make_loader(images, labels)
    resumed.load_state_dict(state)
    assert_same_batches(full[3:], collect(resumed))
    with pytest.raises(CheckpointError, match="batch_size"):
        make_loader(images, labels, batch_size=4).load_state_dict(state)


@pytest.mark.parametrize("n, drop_last", [(48, True), (50, True), (48, False)])
def test_sharding_is_disjoint_equal_and_covers(n, drop_last):
    images, labels = small_data(n)
    world = 3
    loaders = [make_loader(images, labels, rank=r, world_size=world, drop_last=drop_last, batch_size=4)
               for r in range(world)]
    assert len({len(loader) for loader in loaders}) == 1
    shards = [torch.cat([b.index for b in loader]).tolist() for loader in loaders]
    flat = [i for shard in shards for i in shard]
    assert len(flat) == len(set(flat))  # disjoint
    single = make_loader(images, labels, drop_last=False, augment=False)
    if not drop_last:
        assert sorted(flat) == list(range(n))  # covers
    else:
        assert len(flat) == (n // world) // 4 * 4 * world
    # The ranks split the same epoch permutation the single-process loader would use.
    order = torch.cat([b.index for b in single]).tolist()
    assert shards[1][:4] == order[1::world][:4]


def test_eval_loader_keeps_order_and_last_partial_batch():
    images, labels = small_data(21)
    loader = DeviceLoader(images, labels, mean=(0.5, 0.5), std=(0.25, 0.25), batch_size=8)
    batches = collect(loader)
    assert [b.x.shape[0] for b in batches] == [8, 8, 5] and len(loader) == 3
    assert torch.cat([b.index for b in batches]).tolist() == list(range(21))
    want = (images.astype(np.float64) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(torch.cat([b.x for b in batches]).numpy(), want, atol=1e-5)
    next(iter(loader))
    assert len(collect(loader)) == 3  # an eval pass always starts from the beginning


# ----------------------------------------------------------------------------------------------- splits
def test_train_val_split_stratified_deterministic_disjoint():
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    train, val = train_val_split(100, 0.2, seed=7, labels=labels)
    assert len(val) == 20 and len(train) == 80
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    assert np.bincount(labels[val], minlength=4).tolist() == [8, 6, 4, 2]
    again = train_val_split(100, 0.2, seed=7, labels=labels)
    assert np.array_equal(val, again[1])
    assert not np.array_equal(val, train_val_split(100, 0.2, seed=8, labels=labels)[1])
    empty_train, empty_val = train_val_split(10, 0.0, seed=0, labels=np.zeros(10))
    assert len(empty_val) == 0 and empty_train.tolist() == list(range(10))


def test_balanced_subset_counts_fractions_and_small_classes():
    labels = np.repeat(np.arange(3), [50, 50, 4])
    idx = balanced_subset(labels, 30, seed=1)
    assert np.bincount(labels[idx]).tolist() == [13, 13, 4]  # the small class gives all it has
    assert np.array_equal(idx, balanced_subset(labels, 30, seed=1)) and len(set(idx.tolist())) == 30
    even = balanced_subset(np.arange(100) % 10, 0.25, seed=0)
    counts = np.bincount((np.arange(100) % 10)[even])
    assert len(even) == 25 and counts.max() - counts.min() <= 1
    with pytest.raises(ConfigError):
        balanced_subset(labels, 1000, seed=0)


# ----------------------------------------------------------------------------------------------- config + build
def test_data_config_validation():
    cfg = DataConfig(name="cifar100")
    assert (cfg.batch_size, cfg.eval_batch_size, cfg.val_fraction, cfg.download, cfg.drop_last) == (
        128, 512, 0.0, False, True)
    for bad in ({"batch_size": 0}, {"val_fraction": 0.6}, {"train_subset": 0}, {"train_subset": 1.5},
                {"typo": 1}, {"train_subset": True}):
        with pytest.raises(ValidationError):
            DataConfig(name="x", **bad)
    assert DataConfig(name="x", train_subset=6000.0).train_subset == 6000


def test_build_data_from_tiny_cifar(tmp_path):
    write_cifar(tmp_path, "cifar100", as_archive=True)  # 6 train / 8 test images
    cfg = DataConfig(name="cifar100", root=str(tmp_path), batch_size=2, eval_batch_size=4, val_fraction=0.34,
                     options={"verify_checksum": False})
    data = build_data(cfg, "cpu", seed=0, channels_last=True)
    assert data.num_train == 4 and data.val.num_rows == 2 and data.test.num_rows == 8
    assert len(data.train) == 2 and data.info.num_classes == 100
    batch = next(iter(data.train))
    assert batch.x.shape == (2, 3, 32, 32) and batch.x.is_contiguous(memory_format=torch.channels_last)
    assert data.train.crop_padding == 4 and data.train.flip
    with pytest.raises(ConfigError, match="batch"):
        build_data(cfg.model_copy(update={"batch_size": 64}), "cpu", seed=0)


@needs_fashion
def test_build_data_fashion_subset_and_val(fashion, tmp_path):
    cfg = DataConfig(name="fashion_mnist", root=str(FASHION), train_subset=1000, val_fraction=0.1, batch_size=100,
                     flip=False, crop_padding=1, seed=5)
    data = build_data(cfg, torch.device("cpu"), seed=0, rank=1, world_size=2)
    assert data.num_train == 1000 and data.val.num_rows == 6000 and data.test.num_rows == 10_000
    assert len(data.train) == 5 and data.train.rank == 1 and not data.train.flip and data.train.crop_padding == 1
    train_labels = data.train.labels.numpy()
    assert np.bincount(train_labels).tolist() == [100] * 10
    assert np.bincount(data.val.labels.numpy()).tolist() == [600] * 10

