"""The stream pipeline has the device pipeline's semantics: the same rows per epoch and rank, bitwise-equal
batches without augmentation, exact mid-epoch resumption without decoding the skipped samples, 2 ranks x b ==
1 process x 2b, held-out validation and subsets; unreadable files; the auto choice between the two paths."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from adakd.data import DataConfig, DeviceLoader, StreamLoader, build_data, choose_pipeline
from adakd.data.pipeline import parse_budget
from adakd.data.samples import ArraySamples, FileSamples
from adakd.data.transforms import ImageNetTrain, PadCropFlip, SquareResize
from adakd.errors import ConfigError, DataError

PIL = pytest.importorskip("PIL.Image")
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def arrays(n: int = 37, size: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8), rng.integers(0, 5, n).astype(np.int64)


def stream(samples, recipe=None, **kw) -> StreamLoader:
    recipe = recipe or SquareResize()
    return StreamLoader(samples, train_recipe=recipe, eval_recipe=SquareResize(), image_size=kw.pop("size", 6),
                        mean=MEAN, std=STD, **kw)


def collect(loader, limit: int | None = None) -> list:
    out: list = []
    if limit == 0:
        return out
    for batch in loader:
        out.append(batch)
        if limit is not None and len(out) == limit:
            break
    return out


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x.x, y.x) and torch.equal(x.y, y.y) and torch.equal(x.index, y.index)
                                    for x, y in zip(a, b))


def write_folder(root: Path, n_per_class: int = 4, classes=("a", "b", "c"), size=(20, 20), fmt="png", seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_per_class), ("test", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = size if fmt == "png" else (int(rng.integers(24, 48)), int(rng.integers(24, 48)))
                PIL.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / c / f"{i}.{fmt}")


# ----------------------------------------------------------------------------- same order, same batches
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_stream_and_device_give_the_same_batches_per_epoch_and_rank(drop_last, world_size):
    images, labels = arrays()
    for rank in range(world_size):
        kw = dict(batch_size=4, shuffle=True, drop_last=drop_last, seed=3, rank=rank, world_size=world_size)
        device = DeviceLoader(images, labels, mean=MEAN, std=STD, **kw)
        streamed = stream(ArraySamples(images, labels), **kw)
        for epoch in range(3):
            device.set_epoch(epoch)
            streamed.set_epoch(epoch)
            a, b = collect(device), collect(streamed)
            assert len(a) == len(device) == len(streamed) and same(a, b), (rank, epoch)


@pytest.mark.parametrize("workers", [0, 2])
def test_image_folder_streamed_equals_device_resident(tmp_path, workers):
    """Same files, same split / subset / held-out validation: the two pipelines yield equal batches."""
    write_folder(tmp_path, n_per_class=6)
    common = dict(name="image_folder", root=str(tmp_path), image_size=8, batch_size=4, eval_batch_size=5,
                  augment=False, val_fraction=0.2, train_subset=10, num_workers=workers)
    lines: list[str] = []
    device = build_data(DataConfig(pipeline="device", **common), "cpu", seed=1, log=lines.append)
    streamed = build_data(DataConfig(pipeline="stream", **common), "cpu", seed=1, log=lines.append)
    assert isinstance(streamed.train, StreamLoader) and isinstance(device.train, DeviceLoader)
    assert "data pipeline: device" in lines[0] and "data pipeline: stream" in lines[1]
    assert device.num_train == streamed.num_train == 10
    for name in ("train", "val", "test"):
        assert same(collect(getattr(device, name)), collect(getattr(streamed, name))), name
    rows = torch.tensor([2, 0, 1])
    a, b = device.val.batch(rows), streamed.val.batch(rows)  # ABL's random validation batches
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert streamed.train.images.shape == device.train.images.shape and streamed.train.images.is_meta


# ----------------------------------------------------------------------------- resumption
class CountingSamples(ArraySamples):
    decoded: list[int] = []

    def square(self, i: int) -> np.ndarray:
        CountingSamples.decoded.append(i)
        return super().square(i)


def test_resume_mid_epoch_continues_bitwise_without_decoding_the_skipped_samples():
    images, labels = arrays(n=40)
    kw = dict(recipe=PadCropFlip(2, True), batch_size=4, shuffle=True, drop_last=True, seed=7)
    full = stream(ArraySamples(images, labels), **kw)
    reference = [collect(full) for _ in range(2)]  # epochs 0 and 1 (the loader advances by itself)
    steps = len(full)
    for kill in sorted(random.Random(0).sample(range(1, 2 * steps), 4)):  # batches done before the kill
        first = stream(ArraySamples(images, labels), **kw)
        got = collect(first, limit=kill) if kill < steps else collect(first) + collect(first, limit=kill - steps)
        state = first.state_dict()
        assert (state["epoch"], state["position"]) == divmod(kill, steps)
        CountingSamples.decoded = []
        resumed = stream(CountingSamples(images, labels), **kw)
        resumed.load_state_dict(state)
        rest = collect(resumed) + (collect(resumed) if state["epoch"] == 0 else [])
        assert same(got + rest, reference[0] + reference[1]), kill
        assert len(CountingSamples.decoded) == (2 * steps - kill) * 4  # nothing before the kill point


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_workers_on_jpeg_files_with_the_imagenet_recipe(tmp_path, workers):
    write_folder(tmp_path, n_per_class=4, fmt="jpg")
    files = sorted((tmp_path / "train").rglob("*.jpg"))
    samples = FileSamples(files, np.arange(len(files)) % 3, size=16)
    kw = dict(recipe=ImageNetTrain(16), batch_size=3, shuffle=True, drop_last=True, seed=2, num_workers=workers,
              size=16)
    reference = collect(stream(samples, **kw))
    first = stream(samples, **kw)
    got = collect(first, limit=2)
    resumed = stream(samples, **kw)
    resumed.load_state_dict(first.state_dict())
    assert same(got + collect(resumed), reference)
    again = stream(samples, **{**kw, "num_workers": 0})
    assert same(collect(again), reference)  # workers or not, the same pixels


def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b():
    images, labels = arrays(n=41)
    kw = dict(recipe=PadCropFlip(2, True), shuffle=True, drop_last=True, seed=5)
    one = collect(stream(ArraySamples(images, labels), batch_size=8, **kw))
    ranks = [collect(stream(ArraySamples(images, labels), batch_size=4, rank=r, world_size=2, **kw)) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 5
    for step, batch in enumerate(one):
        for r in (0, 1):
            assert torch.equal(batch.x[r::2], ranks[r][step].x) and torch.equal(batch.index[r::2], ranks[r][step].index)


# ----------------------------------------------------------------------------- unreadable files
def damage(root: Path) -> list[Path]:
    truncated = root / "train" / "a" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    text = root / "train" / "b" / "notes.png"
    text.write_text("not an image")
    return [truncated, text]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_file_stops_the_stream_with_one_message_naming_it(tmp_path, workers):
    write_folder(tmp_path)
    bad = damage(tmp_path)
    data = build_data(DataConfig(name="image_folder", root=str(tmp_path), image_size=8, batch_size=15, drop_last=False,
                                 pipeline="stream", num_workers=workers), "cpu", seed=0, log=None)
    with pytest.raises(DataError) as err:
        collect(data.train)
    message = str(err.value)
    assert any(str(p) in message for p in bad) and "data.bad_images=skip" in message and "Traceback" not in message
    with pytest.raises(DataError, match="cannot decode the image"):  # the device path says the same
        build_data(DataConfig(name="image_folder", root=str(tmp_path), image_size=8, batch_size=4,
                              pipeline="device"), "cpu", seed=0, log=None)


@pytest.mark.parametrize("pipeline", ["device", "stream"])
def test_skip_leaves_out_exactly_the_unreadable_files_and_counts_them(tmp_path, pipeline):
    write_folder(tmp_path)
    bad = damage(tmp_path)
    lines: list[str] = []
    data = build_data(DataConfig(name="image_folder", root=str(tmp_path), image_size=8, batch_size=1, augment=False,
                                 pipeline=pipeline, num_workers=0, bad_images="skip"), "cpu", seed=0, log=lines.append)
    assert sorted(data.skipped) == sorted(map(str, bad)) and "left out 2 unreadable" in lines[0]
    assert data.num_train == 3 * 4 - 1  # 12 good files + notes.png - 2 bad
    seen = torch.cat([b.index for b in collect(data.train)])
    assert sorted(seen.tolist()) == list(range(11))  # every readable sample, once


# ----------------------------------------------------------------------------- the choice of pipeline
def test_auto_streams_when_the_decoded_data_exceeds_the_budget(tmp_path):
    write_folder(tmp_path)
    lines: list[str] = []
    cfg = dict(name="image_folder", root=str(tmp_path), image_size=8, batch_size=4, num_workers=0)
    small = build_data(DataConfig(memory_budget=1000, **cfg), "cpu", seed=0, log=lines.append)
    big = build_data(DataConfig(memory_budget="1GB", **cfg), "cpu", seed=0, log=lines.append)
    assert isinstance(small.train, StreamLoader) and isinstance(big.train, DeviceLoader)
    decoded = (12 + 6) * 3 * 8 * 8
    assert small.pipeline.decoded_bytes == decoded and small.pipeline.budget == 1000
    assert "data pipeline: stream" in lines[0] and "does not fit" in lines[0] and "budget" in lines[0]
    assert "data pipeline: device" in lines[1] and "fits the budget" in lines[1]
    assert choose_pipeline("auto", 10, "imagenet", torch.device("cpu")).name == "stream"
    with pytest.raises(ConfigError, match="data.pipeline=stream"):
        choose_pipeline("device", 10, "imagenet", torch.device("cpu"))


def test_budget_forms():
    free = 8 * 10**9
    assert parse_budget(None, free) == 4 * 10**9 and parse_budget(0.25, free) == 2 * 10**9
    assert parse_budget("12GB", free) == 12 * 10**9 and parse_budget("512MiB", free) == 512 * 2**20
    assert parse_budget("25%", free) == 2 * 10**9 and parse_budget(3e9, free) == 3 * 10**9
    with pytest.raises(ConfigError, match="memory_budget"):
        parse_budget("lots", free)


def test_imagenet_recipe_needs_files():
    with pytest.raises(ConfigError, match="pad_crop_flip"):
        collect(stream(ArraySamples(*arrays()), recipe=ImageNetTrain(6), batch_size=2, shuffle=True))


# ----------------------------------------------------------------------------- formats
def write_tiny_imagenet(root: Path, per_class: int = 4, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder = root / "tiny-imagenet-200"
    wnids = ("n02", "n01", "n03")
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    notes = []
    for k, wnid in enumerate(wnids):
        (folder / "train" / wnid / "images").mkdir(parents=True)
        for i in range(per_class):
            PIL.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
        PIL.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "val" / "images" / f"val_{k}.JPEG")
        notes.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(notes) + "\n")


@pytest.mark.parametrize("augment", [False, True])
def test_tiny_imagenet_streams_like_the_device_path(tmp_path, augment):
    """The two paths are bitwise equal, with augmentation too: both draw each sample's crop + flip from
    (seed, epoch, row) with the same function (issue 18)."""
    write_tiny_imagenet(tmp_path)
    common = dict(name="tiny_imagenet", root=str(tmp_path), batch_size=4, eval_batch_size=3, augment=augment,
                  num_workers=0)
    device = build_data(DataConfig(pipeline="device", **common), "cpu", seed=4, log=None)
    streamed = build_data(DataConfig(pipeline="stream", **common), "cpu", seed=4, log=None)
    a, b = collect(device.train), collect(streamed.train)
    assert [x.index.tolist() for x in a] == [x.index.tolist() for x in b]
    assert same(a, b)  # augmented too: the same per-sample draws on both paths
    assert same(collect(device.test), collect(streamed.test))
    assert streamed.train.train_recipe == (PadCropFlip(8, True) if augment else SquareResize())


def test_imagenet_flat_val_ground_truth_files(tmp_path):
    from adakd.data import open_dataset

    root = tmp_path / "imagenet"
    for wnid in ("n01", "n02"):
        (root / "train" / wnid).mkdir(parents=True)
        PIL.new("RGB", (30, 20), (9, 9, 9)).save(root / "train" / wnid / "a.JPEG")
    (root / "val").mkdir()
    for i in (1, 2, 3):
        PIL.new("RGB", (20, 30), (i, i, i)).save(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    with pytest.raises(DataError, match="LOC_val_solution.csv"):
        open_dataset("image_folder", root, image_size=16).samples("test")
    (root / "imagenet_2012_validation_synset_labels.txt").write_text("n02\nn01\nn02\n")
    assert open_dataset("image_folder", root, image_size=16).samples("test").labels.tolist() == [1, 0, 1]
    (root / "mine.txt").write_text("ILSVRC2012_val_00000001 n01\nILSVRC2012_val_00000002 n01\n"
                                   "ILSVRC2012_val_00000003.JPEG n02\n")
    assert open_dataset("image_folder", root, image_size=16, val_labels="mine.txt").samples("test").labels.tolist() \
        == [0, 0, 1]
    (root / "ids.txt").write_text("490\n361\n171\n")
    with pytest.raises(DataError, match="numeric class ids"):
        open_dataset("image_folder", root, image_size=16, val_labels="ids.txt").samples("test")
    (root / "short.txt").write_text("n01\n")
    with pytest.raises(DataError, match="1 labels for 3 images"):
        open_dataset("image_folder", root, image_size=16, val_labels="short.txt").samples("test")


def test_an_epoch_cut_short_does_not_leak_into_the_next(tmp_path):
    """train.max_steps_per_epoch stops reading mid-epoch: with persistent workers still prefetching, the next
    epoch must start clean (no stale batch of the cut epoch)."""
    images, labels = arrays(n=60)
    kw = dict(recipe=PadCropFlip(2, True), batch_size=4, shuffle=True, drop_last=True, seed=9, num_workers=2)
    cut = stream(ArraySamples(images, labels), **kw)
    collect(cut, limit=1)
    cut.set_epoch(1)
    fresh = stream(ArraySamples(images, labels), **kw)
    fresh.set_epoch(1)
    assert same(collect(cut), collect(fresh))
