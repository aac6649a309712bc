"""Runs on the stream pipeline: the ImageNet configs end to end on a small ImageNet-format folder (JPEG,
flat val/ with its ground-truth file), and a streamed run killed at random steps that resumes bitwise equal
to an uninterrupted one."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from adakd.config import load_config, validate
from adakd.data import StreamLoader
from adakd.engine.checkpoint import load_checkpoint
from adakd.engine.trainer import Trainer, train
from adakd.models import build_model
from test_imagenet_support import fake_torchvision  # noqa: F401  (fixture: torchvision's ResNets, tiny)
from tiny_runs import Killed, apply_dotted, kill_after_steps

PIL = pytest.importorskip("PIL.Image")
REPO = Path(__file__).resolve().parents[1]
WNIDS = ("n01440764", "n01443537", "n01484850")


def write_imagenet(root: Path, per_class: int = 4, val: int = 6, seed: int = 0) -> None:
    """ImageNet's layout: train/<wnid>/<wnid>_<i>.JPEG (sizes vary), val/ILSVRC2012_val_<8 digits>.JPEG flat,
    labelled by LOC_val_solution.csv (the Kaggle ground truth)."""
    rng = np.random.default_rng(seed)

    def jpeg(path: Path) -> None:
        h, w = (int(v) for v in rng.integers(40, 90, 2))
        PIL.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, "JPEG", quality=90)

    for wnid in WNIDS:
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(per_class):
            jpeg(root / "train" / wnid / f"{wnid}_{i}.JPEG")
    (root / "val").mkdir()
    lines = ["ImageId,PredictionString"]
    for i in range(1, val + 1):
        name = f"ILSVRC2012_val_{i:08d}"
        jpeg(root / "val" / f"{name}.JPEG")
        lines.append(f"{name},{WNIDS[i % 3]} 1 2 30 40")
    (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("config, teacher, workers", [("r34_r18/kd.yaml", "tv_resnet34", 2),
                                                      ("r50_mv1/kd.yaml", "tv_resnet50", 0),
                                                      ("r34_r18/dkd_abl.yaml", "tv_resnet34", 0)])
def test_imagenet_configs_run_end_to_end_streamed(fake_torchvision, tmp_path, config, teacher, workers):  # noqa: F811
    """The paper recipe (RandomResizedCrop 224 + flip, Resize 256 + CenterCrop 224, KD T = 1, 0.5/0.5, SGD lr 0.2)
    for two steps on a 3-class ImageNet folder; torchvision's ResNets are stood in for by same-named tiny ones."""
    write_imagenet(tmp_path / "imagenet")
    weights = tmp_path / "teacher.pth"
    torch.save(build_model(teacher, num_classes=3, in_channels=3, image_size=224).state_dict(), weights)
    cfg = load_config(REPO / "configs" / "imagenet" / config, [
        f"data.root={tmp_path / 'imagenet'}", "data.batch_size=2", "data.eval_batch_size=3",
        f"data.num_workers={workers}", f"teacher.checkpoint={weights}", "train.epochs=1",
        "train.max_steps_per_epoch=2", "train.precision=fp32", "train.channels_last=false", "device=cpu",
        f"output_dir={tmp_path / 'runs'}", "progress=false"])
    assert (cfg.data.recipe, cfg.data.pipeline, cfg.data.image_size) == ("imagenet", "auto", 224)
    trainer = Trainer(cfg, log=lambda m: None)
    summary = trainer.run()
    assert trainer.data.pipeline.name == "stream" and trainer.data.info.num_classes == 3
    batch = next(iter(trainer.data.test))
    assert batch.x.shape == (3, 3, 224, 224) and batch.y.tolist() == [1, 2, 0]  # labels from the csv
    assert summary["epochs"] == 1 and 0.0 <= summary["last_top1"] <= 100.0
    if "abl" in config:  # ABL's validation split is held out of train/ and streamed too
        assert isinstance(trainer.data.val, StreamLoader) and trainer.data.val.num_rows == 1
        assert trainer.data.num_train == 11
    assert load_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "student.pt")["model"]


def tiny_stream_config(tmp_path: Path, root: Path, **updates) -> dict:
    cfg = {
        "name": "tiny-stream", "seed": 0, "device": "cpu", "output_dir": str(tmp_path / "runs"), "progress": False,
        "data": {"name": "image_folder", "root": str(root), "image_size": 16, "batch_size": 6, "eval_batch_size": 9,
                 "pipeline": "stream", "num_workers": 2},
        "student": {"name": "resnet8", "kwargs": {"widths": [4, 8, 8]}},
        "train": {"epochs": 2, "precision": "fp32", "channels_last": False, "checkpoint_every_steps": 1,
                  "optimizer": {"lr": 0.05}, "schedule": {"name": "cosine"}},
    }
    return apply_dotted(cfg, updates)


def test_streamed_run_killed_at_random_steps_resumes_bitwise(tmp_path, monkeypatch):
    from test_stream import write_folder

    write_folder(tmp_path / "data", n_per_class=12, fmt="jpg")  # 36 images: 6 steps per epoch
    straight = train(validate(tiny_stream_config(tmp_path / "a", tmp_path / "data")), log=lambda m: None)
    cfg = validate(tiny_stream_config(tmp_path / "b", tmp_path / "data"))
    rng = random.Random(16)
    kills = [(1, rng.randint(1, 5)), (2, rng.randint(1, 5))]  # (epoch, steps into it), epoch 2 after a resume
    for epoch, steps in kills:
        restore = kill_after_steps(monkeypatch, steps, lambda phase, call, e=epoch: call == e)
        with pytest.raises(Killed):
            train(cfg.model_copy(update={"resume": epoch > 1}), log=lambda m: None)
        restore()
    resumed = train(cfg.model_copy(update={"resume": True}), log=lambda m: None)
    a = load_checkpoint(Path(straight["run_dir"]) / "checkpoints" / "student.pt")["model"]
    b = load_checkpoint(Path(resumed["run_dir"]) / "checkpoints" / "student.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["last_top1"] == straight["last_top1"]
