"""``precision: fp16``: float16 autocast with a loss scaler (torch.amp.GradScaler), on the CPU here (CPU autocast
runs fp16 in this torch). The scaler's skipped steps are counted as skipped steps, its state is part of the
checkpoint (a resumed run is bitwise the uninterrupted one), a NaN/inf loss is still an error, and the strategies
with steps of their own refuse fp16 with one error naming the fix."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adakd.engine.components as components
from adakd.engine.checkpoint import load_checkpoint
from adakd.engine.nonfinite import NonFiniteLoss
from adakd.errors import ConfigError
from adakd.registry import STRATEGIES
from adakd.runtime import timing
from adakd.strategies import StrategyContext
from tiny_runs import Killed, kill_after_steps
from test_ddp import in_process, metrics, tiny

INIT_SCALE = 2.0 ** 24  # far above what fp16 gradients of this model hold: the first steps overflow


@pytest.fixture
def high_scale(monkeypatch):
    """The scaler starts at 2^24 (torch's default is 2^16) so that overflows happen in a short run."""
    monkeypatch.setattr(components, "new_grad_scaler", lambda device, precision: (
        torch.amp.GradScaler(device.type, init_scale=INIT_SCALE) if precision == "fp16" else None))


def fp16_config(root: Path, run_dir: Path, **train) -> dict:
    cfg = tiny(root, run_dir, precision="fp16", epochs=2, checkpoint_every_steps=1, **train)
    cfg["data"]["train_subset"] = 256  # 8 steps of 32 per epoch
    return cfg


def test_overflows_are_skipped_counted_and_halve_the_scale(tmp_path, fmnist_root, high_scale):
    summary = in_process(fp16_config(fmnist_root, tmp_path / "run"))
    assert summary["precision"] == "fp16"
    skipped = metrics(tmp_path / "run")[-1]["skipped_steps"]
    assert 0 < skipped < 16
    scaler = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["grad_scaler"]
    assert scaler["scale"] == INIT_SCALE / 2 ** skipped  # one halving per skipped step, no growth in 16 steps
    assert scaler["_growth_tracker"] == 16 - skipped  # the overflows came first, every step after them was clean
    student = load_checkpoint(tmp_path / "run" / "checkpoints" / "student.pt")["model"]
    assert all(torch.isfinite(v).all() for v in student.values() if v.is_floating_point())
    counts = {int(v) for k, v in student.items() if k.endswith("num_batches_tracked")}
    assert counts == {16 - skipped}  # a skipped step's forward left the BatchNorm statistics as they were


def test_a_resumed_fp16_run_is_bitwise_the_uninterrupted_one(tmp_path, fmnist_root, high_scale, monkeypatch):
    in_process(fp16_config(fmnist_root, tmp_path / "ref"))
    run_dir = tmp_path / "run"
    # step 4 dies before its checkpoint: the run is left at position 3, inside the overflows (the saved scale is
    # not the initial one)
    restore = kill_after_steps(monkeypatch, 4, lambda phase, call: call == 1)
    with pytest.raises(Killed):
        in_process(fp16_config(fmnist_root, run_dir))
    restore()
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["grad_scaler"]["scale"] < INIT_SCALE
    in_process({**fp16_config(fmnist_root, run_dir), "resume": True})
    ref, got = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (tmp_path / "ref", run_dir))
    assert got["grad_scaler"] == ref["grad_scaler"]
    assert ref["model"].keys() == got["model"].keys()
    for k in ref["model"]:
        assert torch.equal(ref["model"][k], got["model"][k]), k
    assert metrics(run_dir)[-1]["test_top1"] == metrics(tmp_path / "ref")[-1]["test_top1"]


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_a_nonfinite_loss_under_fp16_is_the_guards_not_the_scalers(tmp_path, fmnist_root, mode):
    """lr 1e30 blows the weights up at step 0: the losses after it are NaN. error: the run stops (the scaler
    skipping those steps does not hide them); skip: each is skipped and counted."""
    cfg = fp16_config(fmnist_root, tmp_path / "run", on_nonfinite=mode, optimizer={"lr": 1e30},
                      schedule={"name": "constant"})
    cfg["train"]["epochs"] = 1
    cfg["data"]["train_subset"] = 96  # 3 steps
    if mode == "error":
        with pytest.raises(NonFiniteLoss):
            in_process(cfg)
        return
    in_process(cfg)
    assert metrics(tmp_path / "run")[-1]["skipped_steps"] == 2


@pytest.mark.parametrize("name", ["sakd", "abl"])
def test_strategies_with_steps_of_their_own_refuse_fp16(name):
    ctx = StrategyContext(student=None, teacher=None, distiller=None, ce_weight=1.0, device=torch.device("cpu"),
                          precision="fp16", num_classes=10)
    with pytest.raises(ConfigError, match=r"does not support train.precision=fp16.*precision=bf16.*fp32"):
        STRATEGIES.build(name, ctx)
    assert STRATEGIES.get("standard").factory.supports_fp16


def test_fp16_is_a_probe_candidate_on_cuda_only(monkeypatch):
    cpu = timing.candidates("auto", False, torch.device("cpu"))
    assert [c.precision for c in cpu] == ["fp32", "bf16"]  # never on a CPU: not measured faster there
    monkeypatch.setattr(timing, "bf16_supported", lambda device: False)  # a T4 / V100
    cuda = torch.device("cuda")
    assert [c.precision for c in timing.candidates("auto", False, cuda)] == ["fp32", "fp16"]
    assert [c.precision for c in timing.candidates("auto", False, cuda, fp16=False)] == ["fp32"]


def test_fp16_from_the_environment_is_fp32_for_a_strategy_without_it(monkeypatch):
    monkeypatch.setenv("ADAKD_PRECISION", "fp16")
    cpu = torch.device("cpu")
    assert timing.resolve_fast_path("auto", "auto", cpu, None).precision == "fp16"
    path = timing.resolve_fast_path("auto", "auto", cpu, None, fp16=False)
    assert (path.precision, path.channels_last) == ("fp32", False) and "does not support" in path.describe()
