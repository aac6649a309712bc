"""The global batch survives a change of world size (issue 29 item 2).

``data.global_batch_size: B``: each of W processes takes B / W, so a job killed inside an epoch and resumed
with another number of processes continues with the same global batches (the same samples per step, the same
order of steps), the same steps per epoch and the config's lr: it ends where the uninterrupted job ends
(tolerance and thread count: tests/test_ddp.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from adakd.config import validate
from adakd.data.order import rank_rows
from adakd.engine.checkpoint import load_checkpoint
from adakd.errors import ConfigError
from tiny_runs import Killed, kill_after_steps
from test_ddp import assert_close_weights, env, finish, free_port, in_process, metrics, tiny, weights
from test_elastic import workers

GLOBAL = 32
#: 192 samples / 32. Few steps: the float noise of 1 vs 2 processes (reduction order) grows with training;
#: measured max abs weight difference of the uninterrupted runs: 1e-6 after 4 and 6 steps, 1.1e-5 after 8,
#: 8e-4 after 12, 6e-3 after 16 (lr 0.01, cosine).
STEPS = 6


def global_config(root: Path, run_dir: Path) -> dict:
    cfg = tiny(root, run_dir, checkpoint_every_steps=1)
    cfg["data"].update(train_subset=GLOBAL * STEPS, global_batch_size=GLOBAL)
    cfg["data"].pop("batch_size")
    return cfg


def torchrun(config: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "adakd", "train", str(config), *extra]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def two_process_reference(tmp_path_factory, fmnist_root) -> Path:
    """The uninterrupted job: 2 processes x 16."""
    tmp = tmp_path_factory.mktemp("global")
    out = finish(torchrun(write(tmp / "ref.yaml", global_config(fmnist_root, tmp / "ref"))))
    assert "global batch 32 = 2 process(es) x 16" in out
    return tmp / "ref"


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_every_world_size_reads_the_same_global_batches(world_size):
    """Step s of W processes (each B / W rows of its strided shard) reads the rows of step s of 1 process."""
    n, b = GLOBAL * STEPS, GLOBAL // world_size
    one = rank_rows(n, 0, 3, shuffle=True, drop_last=True)
    shards = [rank_rows(n, 0, 3, shuffle=True, rank=r, world_size=world_size, drop_last=True)
              for r in range(world_size)]
    for s in range(STEPS):
        step = torch.cat([rows[s * b:(s + 1) * b] for rows in shards])
        assert sorted(step.tolist()) == sorted(one[s * GLOBAL:(s + 1) * GLOBAL].tolist()), s


def test_a_global_batch_that_does_not_divide_is_one_error_naming_the_fix():
    data = validate({"data": {"name": "fashion_mnist", "global_batch_size": 100}, "student": {"name": "r"}}).data
    assert data.per_process_batch(4) == 25 and data.per_process_batch(1) == 100
    with pytest.raises(ConfigError, match=r"global_batch_size=100 does not divide over 3 processes.*99 or 102"):
        data.per_process_batch(3)
    plain = validate({"data": {"name": "fashion_mnist", "batch_size": 64}, "student": {"name": "r"}}).data
    assert plain.per_process_batch(4) == 64  # no global batch: batch_size is the per-process batch


@pytest.mark.extended
def test_two_processes_killed_mid_epoch_resume_on_one(tmp_path, fmnist_root, two_process_reference):
    run_dir = tmp_path / "run"
    cfg = global_config(fmnist_root, run_dir)
    proc = torchrun(write(tmp_path / "run.yaml", cfg))
    last, killed, deadline = run_dir / "checkpoints" / "last.pt", None, time.time() + 240
    while time.time() < deadline and proc.poll() is None and killed is None:
        try:
            state = load_checkpoint(last) if last.exists() else None
        except Exception:  # being replaced right now
            state = None
        if state is not None and 2 <= state["position"] <= STEPS - 3:
            pids = [*workers(proc.pid), proc.pid]
            for pid in pids:  # frozen at once (a step takes longer than this), then killed: a machine gone
                os.kill(pid, signal.SIGSTOP)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed = state["position"]
        time.sleep(0.01)
    proc.communicate(timeout=60)
    assert killed is not None, "the job ended before a mid-epoch checkpoint could be killed"
    saved = load_checkpoint(last)
    assert saved["loader"]["world_size"] == 2 and saved["loader"]["batch_size"] == 16
    assert 0 < saved["position"] < STEPS  # inside the epoch
    summary = in_process({**cfg, "resume": True})  # 1 process x 32, no --allow-changes: the same config
    assert summary["world_size"] == 1
    assert_close_weights(weights(two_process_reference), weights(run_dir))
    one, ref = metrics(run_dir)[0], metrics(two_process_reference)[0]
    assert one["train_top1"] == ref["train_top1"] and one["test_top1"] == ref["test_top1"]
    assert one["lr"] == ref["lr"]  # the config's lr schedule, not rescaled


@pytest.mark.extended
def test_one_process_killed_mid_epoch_resumes_on_two(tmp_path, fmnist_root, two_process_reference, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = global_config(fmnist_root, run_dir)
    restore = kill_after_steps(monkeypatch, 4, lambda phase, call: call == 1)  # step 4 dies before its checkpoint:
    with pytest.raises(Killed):  # the run is left at position 3
        in_process(cfg)
    restore()
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["position"] == 3 and saved["loader"]["world_size"] == 1 and saved["loader"]["batch_size"] == 32
    out = finish(torchrun(write(tmp_path / "run.yaml", cfg), "--resume"))
    assert "resuming" in out and "global batch 32 = 2 process(es) x 16" in out
    assert_close_weights(weights(two_process_reference), weights(run_dir))
    assert metrics(run_dir)[0]["train_top1"] == metrics(two_process_reference)[0]["train_top1"]
