"""The trainer end to end on real Fashion-MNIST (tiny subsets): records, reproducibility, resume,
teacher cache, evaluation, and the errors users hit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adakd.config import validate
from adakd.engine.checkpoint import load_checkpoint, save_checkpoint
from adakd.engine.trainer import NonFiniteLoss, train
from adakd.errors import AdakdError, CheckpointError
from tiny_runs import Killed, apply_dotted, kill_after_steps

TINY_MODEL = {"name": "resnet8", "kwargs": {"widths": [8, 16, 16]}}


def tiny_config(tmp_path: Path, root: Path, **updates) -> dict:
    cfg = {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "output_dir": str(tmp_path / "runs"),
        "progress": False,
        "data": {"name": "fashion_mnist", "root": str(root), "batch_size": 32, "eval_batch_size": 500,
                 "train_subset": 256, "test_subset": 1000},
        "student": TINY_MODEL,
        "train": {"epochs": 2, "precision": "fp32", "channels_last": False,
                  "optimizer": {"lr": 0.05}, "schedule": {"name": "cosine"}},
    }
    return apply_dotted(cfg, updates)


def run(tmp_path, root, **updates):
    return train(validate(tiny_config(tmp_path, root, **updates)), log=lambda m: None)


def student_state(run_dir: str) -> dict:
    return load_checkpoint(Path(run_dir) / "checkpoints" / "student.pt")["model"]


def test_run_directory_records(tmp_path, fmnist_root):
    summary = run(tmp_path, fmnist_root)
    d = Path(summary["run_dir"])
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "train.log", "checkpoints/last.pt",
                 "checkpoints/best.pt", "checkpoints/student.pt"):
        assert (d / name).exists(), name
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for r in lines:
        for key in ("lr", "loss", "ce", "train_top1", "test_top1", "test_top5", "train_seconds"):
            assert key in r
    saved = json.loads((d / "summary.json").read_text())
    for key in ("best_top1", "last_top1", "epochs", "train_seconds", "images_per_second"):
        assert key in saved
    assert saved["last_top1"] == lines[-1]["test_top1"]
    assert 10.0 < saved["best_top1"] <= 100.0  # learned something beyond chance on 10 classes


def test_same_seed_same_numbers(tmp_path, fmnist_root):
    a = run(tmp_path / "a", fmnist_root)
    b = run(tmp_path / "b", fmnist_root)
    sa, sb = student_state(a["run_dir"]), student_state(b["run_dir"])
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["last_top1"] == b["last_top1"]
    c = run(tmp_path / "c", fmnist_root, seed=1)
    sc = student_state(c["run_dir"])
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("every", [None, 3])
def test_resume_after_kill_matches_uninterrupted(tmp_path, fmnist_root, monkeypatch, every):
    """Kill after an epoch (or mid-epoch with step checkpoints), resume, end bitwise equal."""
    straight = run(tmp_path / "straight", fmnist_root, **{"train.checkpoint_every_steps": every})
    cfg = validate(tiny_config(tmp_path / "killed", fmnist_root, **{"train.checkpoint_every_steps": every}))
    # epoch 2: die after 5 of its 8 steps (with every=3, the last step checkpoint is at 4)
    restore = kill_after_steps(monkeypatch, 5, lambda phase, call: call == 2)
    with pytest.raises(Killed):
        train(cfg, log=lambda m: None)
    restore()
    resumed = train(cfg.model_copy(update={"resume": True}), log=lambda m: None)
    a, b = student_state(straight["run_dir"]), student_state(resumed["run_dir"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["last_top1"] == straight["last_top1"]
    epochs = [json.loads(x)["epoch"] for x in (Path(resumed["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_rerun_gets_new_directory_and_resume_of_finished_run_is_noop(tmp_path, fmnist_root):
    first = run(tmp_path, fmnist_root)
    second = run(tmp_path, fmnist_root)
    assert first["run_dir"] != second["run_dir"] and second["run_dir"].endswith("tiny-1")
    again = run(tmp_path, fmnist_root, resume=True)
    assert again["run_dir"] == first["run_dir"] and again["best_top1"] == first["best_top1"]


def test_kd_with_teacher_recipe_is_cached_and_compared_with_scratch(tmp_path, fmnist_root):
    recipe = tmp_path / "teacher.yaml"
    teacher_cfg = tiny_config(tmp_path, fmnist_root, name="tiny-teacher", student={"name": "resnet8"})
    teacher_cfg.pop("output_dir")
    import yaml

    recipe.write_text(yaml.safe_dump(teacher_cfg))
    logs: list[str] = []
    cfg = validate(tiny_config(tmp_path, fmnist_root, name="kd", teacher={"name": "resnet8", "recipe": str(recipe)},
                               losses={"kd": {"temperature": 4.0}}, ce_weight=0.1, compare_scratch=True))
    summary = train(cfg, log=logs.append)
    assert any("training teacher" in m for m in logs)
    assert summary["teacher_top1"] is not None and summary["teacher_top1"] > 10
    assert "scratch" in summary and summary["scratch"]["best_top1"] > 0
    metrics = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert "kd" in metrics[0] and "ce" in metrics[0]
    logs.clear()
    train(cfg.model_copy(update={"compare_scratch": False}), log=logs.append)
    assert any("using cached teacher" in m for m in logs)


def test_teacher_checkpoint_that_does_not_fit(tmp_path, fmnist_root):
    t = run(tmp_path, fmnist_root, name="t")  # a tiny resnet8 (widths 8/16/16)
    cfg = validate(tiny_config(tmp_path, fmnist_root, name="kd",
                               teacher={"name": "resnet20", "checkpoint": t["run_dir"]}, losses={"kd": {}}))
    with pytest.raises(CheckpointError, match="does not fit"):
        train(cfg, log=lambda m: None)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "x.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_nan_loss_stops_with_step_and_skip_mode_continues(tmp_path, fmnist_root):
    with pytest.raises(NonFiniteLoss, match="step 1"):
        run(tmp_path / "a", fmnist_root, **{"train.optimizer.lr": 1e30})
    summary = run(tmp_path / "b", fmnist_root, **{"train.optimizer.lr": 1e30, "train.on_nonfinite": "skip",
                                                   "train.epochs": 1})
    assert summary["epochs"] == 1


def test_unwritable_run_dir(tmp_path, fmnist_root):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AdakdError, match="cannot write"):
        run(tmp_path, fmnist_root, run_dir=str(blocker / "sub"))


def test_a_run_directory_is_held_by_one_process(tmp_path):
    """A second process on a run directory in use is refused with one message; the lock goes with the holder."""
    import subprocess
    import sys

    from adakd.engine.run_dir import RunDirLock
    from adakd.errors import AdakdError

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from adakd.engine.run_dir import RunDirLock; "
        f"held = RunDirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AdakdError, match=f"in use by another adakd process \\(pid {holder.pid}\\)"):
            RunDirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunDirLock(tmp_path).acquire()  # a killed holder leaves no stale lock
    lock.release()
    RunDirLock(tmp_path).acquire().release()  # and a released one can be taken again


def test_the_trainer_sets_its_attributes_in_init_only():
    """Every ``self.<name> = ...`` of ``Trainer`` names an attribute that ``__init__`` sets (no attribute
    appears later, so nothing needs hasattr/getattr guards), and the trainer has no such guards."""
    import ast
    import re
    from pathlib import Path

    import adakd.engine.trainer as module

    source = Path(module.__file__).read_text()
    (cls,) = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Trainer"]

    def assigned(fn: ast.AST) -> set[str]:
        targets = [t for n in ast.walk(fn) if isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign))
                   for t in (n.targets if isinstance(n, ast.Assign) else [n.target])]
        flat = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
        return {e.attr for e in flat if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name)
                and e.value.id == "self"}

    methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
    in_init = assigned(methods["__init__"])
    later = {name: assigned(f) - in_init for name, f in methods.items() if name != "__init__"}
    assert not any(later.values()), f"attributes first set outside Trainer.__init__: {later}"
    assert {"parts", "totals", "callbacks", "cfg"} <= in_init
    assert not re.search(r"\b(hasattr|getattr)\(self,", source)
