"""Issue 18: replayable augmentation on both data paths, and the teacher-output cache (exactness with
K = epochs, refusal of a foreign cache, a killed build that resumes, a corrupted file caught by its checksum)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adakd.config import DataConfig, validate
from adakd.data import build_data
from adakd.data.loader import DeviceLoader
from adakd.data.transforms import PadCropFlip, augmentation_params, pad_crop_flip_draws, sample_seed, sample_seeds
from adakd.engine import teacher_cache as tc
from adakd.engine.callbacks import Callback
from adakd.engine.checkpoint import save_checkpoint
from adakd.engine.trainer import train
from adakd.tools.cache import build_for_config, describe
from adakd.errors import CacheError
from adakd.models import build_model
from tiny_runs import apply_dotted

TEACHER = {"name": "resnet8", "kwargs": {"widths": [8, 16, 32]}}
STUDENT = {"name": "resnet8", "kwargs": {"widths": [8, 8, 16]}}


# ----------------------------------------------------------------------------- replayable augmentation
def test_sample_seeds_vectorised_equal_scalar_and_pure():
    rows = np.arange(50)
    many = sample_seeds(3, 7, rows)
    assert [int(s) for s in many] == [sample_seed(3, 7, int(r)) for r in rows]
    assert len(set(many.tolist())) == 50 and (many < 2**63).all()
    assert (sample_seeds(3, 8, rows) != many).all() and (sample_seeds(4, 7, rows) != many).all()
    offsets, flips = pad_crop_flip_draws(sample_seeds(0, 0, np.arange(20000)), 4, True)
    assert offsets.min() == 0 and offsets.max() == 8
    assert np.bincount(offsets[:, 0], minlength=9).min() > 20000 / 9 * 0.9  # uniform over 0..8
    assert abs(flips.mean() - 0.5) < 0.02


def test_device_loader_augmentation_is_a_function_of_seed_epoch_row():
    """The device path's crop + flip of a row depends on (seed, epoch, row) only, not on the batch, rank or
    order: the batches of a 2-rank job hold the very pixels of the 1-rank job, and view_batch replays them."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 8, 8), generator=gen, dtype=torch.uint8)
    labels = torch.arange(40) % 10
    kw = dict(mean=[0.5], std=[0.5], shuffle=True, augment=True, crop_padding=2, flip=True, seed=5)
    one = DeviceLoader(images, labels, batch_size=8, **kw)
    one.set_epoch(3)
    seen = {int(r): x for b in one for r, x in zip(b.index, b.x)}
    for rank in (0, 1):
        part = DeviceLoader(images, labels, batch_size=5, rank=rank, world_size=2, **kw)
        part.set_epoch(3)
        for b in part:
            for r, x in zip(b.index, b.x):
                assert torch.equal(seen[int(r)], x)
    rows = torch.tensor([7, 3, 30])
    replay = one.view_batch(rows, seed=5, view=3)
    for r, x in zip(rows, replay.x):
        assert torch.equal(seen[int(r)], x)
    # the stream recipe's draws for one sample are the same numbers
    offsets, flips = pad_crop_flip_draws(sample_seeds(5, 3, rows.numpy()), 2, True)
    for i, r in enumerate(rows.tolist()):
        p = augmentation_params(PadCropFlip(2, True), 5, 3, r, 8, 8)
        assert (p["top"], p["left"], p["flip"]) == (int(offsets[i, 0]), int(offsets[i, 1]), bool(flips[i]))


def test_replay_augmentation_reads_view_epoch_mod_k():
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (16, 1, 8, 8), generator=gen, dtype=torch.uint8)
    loader = DeviceLoader(images, torch.zeros(16, dtype=torch.long), mean=[0.5], std=[0.5], batch_size=16,
                          shuffle=True, augment=True, crop_padding=2, flip=True, seed=9)
    loader.replay_augmentation(seed=2, views=3)
    loader.set_epoch(4)  # view 1
    b = next(iter(loader))
    assert torch.equal(b.x, loader.view_batch(b.index, seed=2, view=1).x)


# ----------------------------------------------------------------------------- the cache in runs
def _teacher_checkpoint(tmp_path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(TEACHER["name"], num_classes=10, in_channels=1, image_size=28, **TEACHER["kwargs"])
    path = tmp_path / f"teacher{seed}.pt"
    save_checkpoint(path, {"model": model.state_dict()})
    return path


def _cfg(tmp_path: Path, root: Path, ckpt: Path, **updates) -> dict:
    cfg = {
        "name": "kd", "seed": 0, "device": "cpu", "output_dir": str(tmp_path / "runs"), "progress": False,
        "data": {"name": "fashion_mnist", "root": str(root), "batch_size": 64, "eval_batch_size": 500,
                 "train_subset": 256, "test_subset": 500},
        "student": STUDENT, "teacher": {**TEACHER, "checkpoint": str(ckpt)},
        "losses": {"kd": {"temperature": 4.0}}, "ce_weight": 0.1,
        "train": {"epochs": 2, "precision": "fp32", "channels_last": False, "optimizer": {"lr": 0.05},
                  "schedule": {"name": "cosine"}},
    }
    return apply_dotted(cfg, updates)


class StepLosses(Callback):
    def __init__(self) -> None:
        self.terms: list[dict[str, float]] = []

    def on_step_end(self, trainer, step, terms) -> None:
        self.terms.append({k: float(v) for k, v in terms.items() if k != "correct"})


def _run(cfg: dict, logs: list[str] | None = None) -> list[dict[str, float]]:
    rec = StepLosses()
    train(validate(cfg), log=(logs.append if logs is not None else lambda m: None), callbacks=[rec])
    return rec.terms


@pytest.mark.parametrize("loss", ["kd", "rkd"])
def test_cached_run_with_k_equal_epochs_is_the_live_run(tmp_path, fmnist_root, one_torch_thread, loss):
    """fp32 storage, K = epochs, seed == cache seed: identical losses per step (bitwise; logits and pooled)."""
    ckpt = _teacher_checkpoint(tmp_path)
    losses = {"kd": {"kd": {"temperature": 4.0}}, "rkd": {"rkd": {}}}[loss]
    live = _run(_cfg(tmp_path, fmnist_root, ckpt, name="live", losses=losses))
    logs: list[str] = []
    cached = _run(_cfg(tmp_path, fmnist_root, ckpt, name="cached", losses=losses,
                       **{"teacher.cache": "auto", "teacher.cache_dtype": "fp32"}), logs)
    assert any("the live run" in m for m in logs)  # built by the first method, shared by the next
    assert len(live) == len(cached) == 2 * 4
    assert live == cached
    # fp16 storage: the first step (same student) within fp16's rounding of the teacher's outputs, 2e-3 relative
    half = _run(_cfg(tmp_path, fmnist_root, ckpt, name="half", losses=losses, **{"teacher.cache": "auto"}))
    first = next(k for k in live[0] if k not in ("ce", "loss"))
    assert abs(half[0][first] - live[0][first]) <= 2e-3 * abs(live[0][first]) + 1e-5
    # later steps: the two trainings part as any two runs differing in low bits do (RKD's random-teacher
    # geometry is chaotic at this lr, so only KD's trajectory is held to 5%)
    for a, b in zip(half, live):
        assert abs(a["loss"] - b["loss"]) <= (0.05 if loss == "kd" else 1.0) * abs(b["loss"])


def test_cache_is_shared_refused_when_foreign_and_fallback_is_said(tmp_path, fmnist_root, one_torch_thread):
    ckpt = _teacher_checkpoint(tmp_path)
    logs: list[str] = []
    _run(_cfg(tmp_path, fmnist_root, ckpt, name="a", **{"teacher.cache": "auto", "teacher.cache_views": 3,
                                                          "train.epochs": 1}), logs)
    built = [m for m in logs if "building teacher cache" in m]
    assert len(built) == 1
    path = Path(next(m for m in logs if m.startswith("teacher outputs from cache")).split()[4])
    logs.clear()  # another method, another seed: the same cache, not rebuilt
    _run(_cfg(tmp_path, fmnist_root, ckpt, name="b", seed=1, losses={"dkd": {}},
              **{"teacher.cache": "auto", "teacher.cache_views": 3, "train.epochs": 1}), logs)
    assert not any("building" in m for m in logs) and any(str(path) in m for m in logs)
    info = describe(path)
    assert info["complete"] and info["views_built"] == 3 and not info["corrupt_files"]
    # the same PATH for other weights / data: one clear refusal
    other = _teacher_checkpoint(tmp_path, seed=1)
    with pytest.raises(CacheError, match="other teacher weights.*adakd cache build"):
        _run(_cfg(tmp_path, fmnist_root, other, name="c", **{"teacher.cache": str(path), "teacher.cache_views": 3,
                                                             "train.epochs": 1}))
    with pytest.raises(CacheError, match="other training data"):
        _run(_cfg(tmp_path, fmnist_root, ckpt, name="d", **{"teacher.cache": str(path), "teacher.cache_views": 3,
                                                            "train.epochs": 1, "data.train_subset": 128}))
    with pytest.raises(CacheError, match="augmentation"):
        _run(_cfg(tmp_path, fmnist_root, ckpt, name="e", **{"teacher.cache": str(path), "teacher.cache_views": 3,
                                                            "train.epochs": 1, "data.flip": False}))
    logs.clear()  # a distiller that needs feature maps: the live teacher, said once
    _run(_cfg(tmp_path, fmnist_root, ckpt, name="f", losses={"at": {}}, **{"teacher.cache": "auto",
                                                                           "train.epochs": 1}), logs)
    assert sum("using the live teacher" in m for m in logs) == 1


def test_killed_build_resumes_and_corruption_is_caught(tmp_path, fmnist_root, one_torch_thread, monkeypatch):
    ckpt = _teacher_checkpoint(tmp_path)
    cfg = validate(_cfg(tmp_path, fmnist_root, ckpt, **{"teacher.cache": str(tmp_path / "cache"),
                                                        "teacher.cache_views": 4}))
    logs: list[str] = []
    path = build_for_config(cfg, log=logs.append, stop_after=2)  # "killed" after two views
    assert describe(path)["views_built"] == 2
    with pytest.raises(CacheError, match="incomplete.*resumes"):
        tc.TeacherCache(path, _spec_of(path))
    first = (path / "logits-00000.npy").stat().st_mtime_ns
    logs.clear()
    build_for_config(cfg, log=logs.append)  # resumes: views 2 and 3 only
    assert sum("built" in m for m in logs) == 2 and (path / "logits-00000.npy").stat().st_mtime_ns == first
    assert describe(path)["complete"]
    from adakd.cli import main

    assert main(["cache", "info", str(path)]) == 0
    # a temporary left by a kill mid-write is not a view; a flipped byte fails the checksum
    data = bytearray((path / "logits-00002.npy").read_bytes())
    data[-3] ^= 0x40
    (path / "logits-00002.npy").write_bytes(bytes(data))
    assert describe(path)["corrupt_files"] == ["logits-00002.npy"]
    assert main(["cache", "info", str(path), "--json"]) == 1
    with pytest.raises(CacheError, match="logits-00002.npy fails its sha256 checksum"):
        _run(_cfg(tmp_path, fmnist_root, ckpt, **{"teacher.cache": str(path), "teacher.cache_views": 4}))


def _spec_of(path: Path) -> tc.CacheSpec:
    m = json.loads((path / "cache.json").read_text())
    m.pop("key")
    return tc.CacheSpec(m)


def test_topk_storage_keeps_the_top_logits_and_the_rest_mass():
    logits = torch.randn(5, 10)
    arrays = tc._compress(logits, torch.randn(5, 4), "fp32", 3)
    values, index = logits.topk(3, dim=1)
    assert np.allclose(arrays["logits"], values.numpy()) and (arrays["topk"] == index.numpy()).all()
    p = logits.softmax(1)
    rest = 1 - p.gather(1, index).sum(1)
    got = torch.from_numpy(arrays["rest"]) - logits.logsumexp(1)
    assert torch.allclose(got.exp(), rest, atol=1e-5)


def test_sweep_teacher_cache_auto_builds_one_cache_per_pair(tmp_path):
    from adakd.tools.sweep import cache_groups, load_sweep, uses_cache

    ckpt = _teacher_checkpoint(tmp_path)
    base = _cfg(tmp_path, tmp_path, ckpt)
    base.pop("output_dir")
    (tmp_path / "base.yaml").write_text(json.dumps(base))
    (tmp_path / "sweep.yaml").write_text(json.dumps({
        "name": "s", "base": "base.yaml", "seeds": [0, 1], "teacher_cache": "auto",
        "grid": {"method": {"kd": {}, "dkd": {"losses": {"dkd": {}}}, "at": {"losses": {"at": {}}}},
                 "pair": {"small": {}, "wide": {"teacher": {"kwargs": {"widths": [16, 16, 32]}}}}},
        "exclude": [{"method": ["kd"], "pair": ["wide"]}]}))
    sweep = load_sweep(tmp_path / "sweep.yaml")
    assert all(r.validated().teacher.cache == "auto" for r in sweep.runs)
    cached = [r.name for r in sweep.runs if uses_cache(r.validated())]
    assert sorted(cached) == sorted(f"s-{m}-{p}-s{s}" for m, p in [("kd", "small"), ("dkd", "small"), ("dkd", "wide")]
                                    for s in (0, 1))
    assert sorted(r.labels["pair"] for r in cache_groups(sweep.runs)) == ["small", "wide"]  # once per pair
    import subprocess
    import sys

    # in a fresh process (nothing registered but what the sweep imports): the CLI's dry run
    out = subprocess.run([sys.executable, "-m", "adakd", "sweep", str(tmp_path / "sweep.yaml"), "--dry-run"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_stream_and_device_paths_replay_the_same_cache_views(tmp_path):
    """A cache built on one data path serves the other: both replay view e mod K of the cache seed alike."""
    from test_stream import collect, same, write_tiny_imagenet

    write_tiny_imagenet(tmp_path)
    common = dict(name="tiny_imagenet", root=str(tmp_path), batch_size=4, eval_batch_size=3, num_workers=0)
    device = build_data(DataConfig(pipeline="device", **common), "cpu", seed=4, log=None).train
    stream = build_data(DataConfig(pipeline="stream", **common), "cpu", seed=4, log=None).train
    for loader in (device, stream):
        loader.replay_augmentation(seed=2, views=3)
        loader.set_epoch(4)
    a, b = collect(device), collect(stream)
    assert same(a, b)
    rows = a[0].index
    assert torch.equal(device.view_batch(rows, 2, 1).x, a[0].x) and torch.equal(stream.view_batch(rows, 2, 1).x, a[0].x)
    assert tc.augmentation_signature(device) == tc.augmentation_signature(stream)


def test_cache_directory_names_are_path_safe_for_hub_model_names():
    """A tv:/timm: model name's colon (not allowed in a Windows path) never reaches a cache directory name."""
    from adakd.engine.teacher import path_safe, recipe_key
    cfg = validate({"name": "fmnist-teacher", "data": {"name": "fashion_mnist"}, "student": {"name": "tv:resnet18"}})
    key = recipe_key(cfg)
    assert key.startswith("fmnist-teacher-tv-resnet18-") and ":" not in key
    assert path_safe("timm:mobilenetv3_small_050/x y") == "timm-mobilenetv3_small_050-x-y"
    assert path_safe("resnet20-fashion_mnist-k15-0a1b") == "resnet20-fashion_mnist-k15-0a1b"  # unchanged
