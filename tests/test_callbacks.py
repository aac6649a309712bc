"""Trainer callbacks: the events a user's callback sees, in order, and the TensorBoard writer (train.tensorboard)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from adakd.config import validate
from adakd.engine.callbacks import Callback
from adakd.engine.trainer import train
from tiny_runs import apply_dotted


def tiny(tmp_path: Path, root: Path, **updates) -> dict:
    cfg = {"name": "cb", "seed": 0, "device": "cpu", "output_dir": str(tmp_path / "runs"), "progress": False,
           "data": {"name": "fashion_mnist", "root": str(root), "batch_size": 32, "eval_batch_size": 500,
                    "train_subset": 128, "test_subset": 500},
           "student": {"name": "resnet8", "kwargs": {"widths": [8, 8, 16]}},
           "train": {"epochs": 2, "precision": "fp32", "channels_last": False, "optimizer": {"lr": 0.05},
                     "schedule": {"name": "cosine"}}}
    return apply_dotted(cfg, updates)


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_setup(self, trainer):
        self.events.append(("setup", trainer.student is not None))

    def on_phase_start(self, trainer, phase):
        self.events.append(("phase", phase.name))

    def on_step_end(self, trainer, step, terms):
        self.events.append(("step", step, sorted(terms)))

    def on_epoch_end(self, trainer, record):
        record["my_metric"] = 42.0  # a callback may add to the epoch record
        self.events.append(("epoch", record["epoch"]))

    def on_checkpoint(self, trainer, path):
        self.events.append(("checkpoint", Path(path).name))

    def on_run_end(self, trainer, summary):
        summary["my_summary"] = "yes"
        self.events.append(("end", summary["best_top1"] > 0))


def test_a_callback_sees_every_event_in_order(tmp_path, fmnist_root):
    rec = Recorder()
    summary = train(validate(tiny(tmp_path, fmnist_root)), log=lambda m: None, callbacks=[rec])
    kinds = [e[0] for e in rec.events]
    assert kinds[0] == "setup" and rec.events[0][1] and kinds[1] == "phase" and kinds[-1] == "end"
    steps = [e for e in rec.events if e[0] == "step"]
    assert [e[1] for e in steps] == list(range(8))  # 128 / 32 = 4 steps x 2 epochs, numbered from 0
    assert all({"ce", "loss", "correct"} <= set(e[2]) for e in steps)
    assert [e[1] for e in rec.events if e[0] == "epoch"] == [1, 2]
    first_epoch_end = kinds.index("epoch")
    assert kinds[first_epoch_end + 1] == "checkpoint"  # last.pt right after the epoch's record
    assert {e[1] for e in rec.events if e[0] == "checkpoint"} >= {"last.pt", "best.pt", "student.pt"}
    records = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert all(r["my_metric"] == 42.0 for r in records)
    assert json.loads((Path(summary["run_dir"]) / "summary.json").read_text())["my_summary"] == "yes"


def test_tensorboard_writer_logs_the_epoch_scalars(tmp_path, fmnist_root):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = train(validate(tiny(tmp_path, fmnist_root, **{"train.tensorboard": True})), log=lambda m: None)
    run_dir = Path(summary["run_dir"])
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/test_top1", "train/lr"} <= set(tags)
    logged = [(e.step, e.value) for e in events.Scalars("train/test_top1")]
    assert logged == [(r["epoch"], pytest.approx(r["test_top1"])) for r in records]
