"""Elastic torchrun jobs (issue 17): ``resume: auto`` and restarts under ``--max-restarts`` continue their own run.

A worker killed with SIGKILL makes torchrun's agent stop the others and relaunch all of them with the same
arguments (``TORCHELASTIC_RESTART_COUNT`` = 1) after a new rendezvous round (c10d rendezvous backend: the static
one of ``--master_addr/--master_port`` reuses its store across restarts, and a relaunched rank 0 read the killed
rank's stale gloo address once: "connectFullMesh failed ... Connection refused"); the relaunched workers find the run's own ``last.pt`` (same
config) and continue from it, ending with the weights of an uninterrupted job (tolerance: tests/test_ddp.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from adakd.engine.checkpoint import load_checkpoint
from test_ddp import assert_close_weights, env, free_port, in_process, metrics, tiny, weights


def elastic_config(root: Path, run_dir: Path) -> dict:
    cfg = tiny(root, run_dir, epochs=2, checkpoint_every_steps=1)
    cfg["data"]["train_subset"] = 512  # 2 x 16 per step: 16 steps per epoch, 32 in all
    return cfg


def launch(config: Path, *extra: str, restarts: int = 1) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", str(restarts),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "elastic-test", "-m", "adakd", "train", str(config),
           "data.batch_size=16", *extra]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def workers(agent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(agent)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def test_killed_worker_restarts_and_resumes_its_own_run(tmp_path, fmnist_root):
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump(elastic_config(fmnist_root, tmp_path / "ref")))
    proc = launch(ref, restarts=0)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]

    cfg = tmp_path / "run.yaml"
    run_dir = tmp_path / "run"
    cfg.write_text(yaml.safe_dump(elastic_config(fmnist_root, run_dir)))
    proc = launch(cfg)  # no --resume: the restart decides by itself
    last = run_dir / "checkpoints" / "last.pt"
    killed = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            try:
                state = load_checkpoint(last)
            except Exception:  # being replaced right now
                state = None
            if state is not None and state["phase_index"] == 0 and 3 <= state["step"] <= 20:
                pids = workers(proc.pid)
                if len(pids) == 2:
                    killed = state["step"]
                    os.kill(pids[-1], signal.SIGKILL)  # one worker, the agent and the other rank live on
                    break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=300)
    (tmp_path / "torchrun.log").write_text(out)
    assert killed is not None, "no checkpoint to kill after:\n" + out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    assert "torchrun restart 1: continuing" in out, out[-3000:]
    assert "resuming" in out
    assert_close_weights(weights(tmp_path / "ref"), weights(run_dir))
    assert [r["epoch"] for r in metrics(run_dir)] == [1, 2]
    assert [r["test_top1"] for r in metrics(run_dir)] == [r["test_top1"] for r in metrics(tmp_path / "ref")]


def test_resume_auto_starts_then_continues_the_same_config_only(tmp_path, fmnist_root):
    """``resume: auto`` in one process: no checkpoint -> a new run; a checkpoint of the same config -> resume
    (here: a finished run, nothing to do); another config -> a new run beside it, never a strict-resume error."""
    cfg = tiny(fmnist_root, tmp_path / "x")
    cfg.pop("run_dir")
    cfg.update(output_dir=str(tmp_path), name="auto", resume="auto")
    first = in_process(cfg)
    assert first["run_dir"] == str(tmp_path / "auto")
    again = in_process(cfg)
    assert again["run_dir"] == str(tmp_path / "auto") and again["best_top1"] == first["best_top1"]
    other = in_process({**cfg, "seed": 1})
    assert other["run_dir"] == str(tmp_path / "auto-1")
    assert in_process({**cfg, "seed": 1})["run_dir"] == str(tmp_path / "auto-1")  # its own, the newest of that config
