"""Real (tiny) trainings between torchvision and timm models on Fashion-MNIST (28x28, 1 channel), and the
export of their students, checked like the zoo's. Runs in the vision venv only."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adakd.config import validate
from adakd.engine.checkpoint import save_checkpoint
from adakd.engine.trainer import Trainer
from adakd.tools.export import export_student
from adakd.models import build_model

TEACHER = "tv:resnet18"


def _config(out: Path, root: Path, teacher_ckpt: Path, student: str, losses: dict, strategy: dict | None = None) -> dict:
    return {
        "name": "vision-tiny", "seed": 0, "device": "cpu", "output_dir": str(out), "progress": False,
        "data": {"name": "fashion_mnist", "root": str(root), "batch_size": 16, "eval_batch_size": 100,
                 "train_subset": 32, "test_subset": 100},
        "student": {"name": student},
        "teacher": {"name": TEACHER, "checkpoint": str(teacher_ckpt)},
        "ce_weight": 0.5, "losses": losses, "strategy": strategy or {"name": "standard"},
        "train": {"epochs": 1, "max_steps_per_epoch": 2, "precision": "fp32", "channels_last": False,
                  "optimizer": {"lr": 0.05}, "schedule": {"name": "constant"}},
    }


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    teacher = build_model(TEACHER, num_classes=10, in_channels=1, image_size=28)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_checkpoint(path, {"model": teacher.state_dict()})
    return path


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, fmnist_root, teacher_ckpt) -> dict:
    """KD + DKD + AT + FitNet + CRD from a torchvision teacher into a timm student: 2 steps."""
    losses = {"kd": {"weight": 0.5}, "dkd": {"warmup_epochs": 1}, "at": {}, "fitnet": {},
              "crd": {"num_negatives": 16, "embed_dim": 16}}
    out = tmp_path_factory.mktemp("runs")
    cfg = validate(_config(out, fmnist_root, teacher_ckpt, "timm:mobilenetv3_small_050", losses))
    return Trainer(cfg, log=lambda m: None).run()


def test_five_losses_step_between_torchvision_and_timm(kd_run):
    run = Path(kd_run["run_dir"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = records[-1]
    terms = ("kd", "tckd", "nckd", "at", "fitnet", "crd")  # dkd reports its two parts
    assert all(k in train and train[k] == train[k] and abs(train[k]) < float("inf") for k in terms), train
    # the student moved away from its initialisation
    before = build_model("timm:mobilenetv3_small_050", num_classes=10, in_channels=1, image_size=28)
    after = torch.load(run / "checkpoints" / "student.pt", weights_only=True)["model"]
    torch.manual_seed(0)
    assert any(not torch.equal(after[k], v) for k, v in before.state_dict().items() if v.is_floating_point())


@pytest.mark.parametrize("fmt", ["torchscript", "safetensors", "onnx"])
def test_export_timm_student(kd_run, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="ONNX export needs adakd[onnx]")
    result = export_student(kd_run["run_dir"], fmt, out=tmp_path)
    assert Path(result["path"]).is_file() and result["model"] == "timm:mobilenetv3_small_050"
    check = result["check"]
    if check["max_abs_diff"] is not None:
        assert check["max_abs_diff"] <= check["tolerance"]
    assert result["input_shape"] == ["batch", 1, 28, 28]


def test_sakd_and_abl_run_with_torchvision_students(fmnist_root, teacher_ckpt, tmp_path):
    student = "tv:mobilenet_v3_small"
    sakd = validate(_config(tmp_path / "sakd", fmnist_root, teacher_ckpt, student, {"at": {}}, {"name": "sakd"}))
    summary = Trainer(sakd, log=lambda m: None).run()
    assert Path(summary["run_dir"], "checkpoints", "student.pt").is_file()
    blocks = len(build_model(student, num_classes=10, in_channels=1, image_size=28).blocks)
    abl = validate(_config(tmp_path / "abl", fmnist_root, teacher_ckpt, student, {"kd": {}},
                           {"name": "abl", "options": {"gammas": [0.5] * (blocks - 1)}}))
    summary = Trainer(abl, log=lambda m: None).run()
    assert Path(summary["run_dir"], "checkpoints", "student.pt").is_file()
