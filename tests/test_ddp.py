"""Data-parallel training (engine/distributed.py) with real torchrun launches on this CPU (gloo).

Equality with one process: W ranks with per-rank batch b see the global batch W*b of a 1-process run
(strided shards of the same permutation), gradients are averaged over the ranks, and BatchNorm uses the
global batch through ``train.sync_batchnorm`` (without it each rank normalises over its own shard and the
weights differ by ~1e-2 after 4 steps: measured 0.04 on a running variance, 0.003 on a conv weight).
Every process runs with OMP_NUM_THREADS=1: the thread count alone changes CPU reduction orders and,
amplified by training, moves weights by ~1e-4. Measured difference 2 ranks vs 1 process with the same
thread count: 6e-7 (max abs over every tensor), so the tolerance is ``atol=1e-5, rtol=0``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from adakd.config import validate
from adakd.engine import ranks
from adakd.runtime import distributed as ddp
from adakd.engine.checkpoint import load_checkpoint
from adakd.engine.trainer import train
from tiny_runs import Killed, kill_after_steps

ATOL = 1e-5


def tiny(root: Path, run_dir: Path, **train_updates) -> dict:
    train_cfg = {"epochs": 1, "precision": "fp32", "channels_last": False, "sync_batchnorm": True,
                 "optimizer": {"lr": 0.01}, "schedule": {"name": "cosine"}, "checkpoint_every_steps": 2}
    train_cfg.update(train_updates)
    return {"name": "tiny", "seed": 0, "device": "cpu", "progress": False, "run_dir": str(run_dir),
            "data": {"name": "fashion_mnist", "root": str(root), "batch_size": 32, "eval_batch_size": 250,
                     "train_subset": 128, "test_subset": 500},
            "student": {"name": "resnet8", "kwargs": {"widths": [8, 16, 16]}}, "train": train_cfg}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def torchrun(args: list[str], config: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *args, "-m", "adakd", "train", str(config), *overrides]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    return out


def in_process(cfg: dict, **kwargs) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(validate(cfg), log=lambda m: None, **kwargs)
    finally:
        torch.set_num_threads(threads)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "student.pt")["model"]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_close_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype.is_floating_point:
            torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=0, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fmnist_root) -> Path:
    """The 1-process run: batch 32, 4 steps."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    in_process(tiny(fmnist_root, run_dir))
    return run_dir


def test_two_processes_match_one_process(tmp_path, fmnist_root, reference):
    cfg = tmp_path / "two.yaml"
    cfg.write_text(yaml.safe_dump(tiny(fmnist_root, tmp_path / "two")))
    out = finish(torchrun(["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())],
                          cfg, "data.batch_size=16"))
    assert out.count("done: best top-1") == 1 and out.count("run directory") == 1  # only rank 0 reports
    assert_close_weights(weights(reference), weights(tmp_path / "two"))
    one, two = metrics(reference)[0], metrics(tmp_path / "two")[0]
    assert two["test_top1"] == one["test_top1"] and two["test_top5"] == one["test_top5"]  # whole test split
    assert two["train_top1"] == one["train_top1"]  # the job's 128 samples, not rank 0's 64
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
    # rank 0 alone wrote: one metrics line, no stray files of another rank
    assert len(metrics(tmp_path / "two")) == 1


ADAPTIVE = {
    # SAKD: policy + graft adapters trained by their own optimiser; Gumbel noise drawn for the global batch;
    # init_bias 0 so that the routing is a real coin flip per sample and spot. AT at weight 1: at 100 the
    # float noise of any 2-rank run (standard AT included) grows to ~4e-5 in 4 steps, at 1 it stays ~1e-6.
    "sakd": {"losses": {"at": {"weight": 1.0}},
             "strategy": {"name": "sakd", "options": {"kd_weight": 1.0, "init_bias": 0.0}}},
    # ABL: 1 search epoch (hypergradient from the job's validation batch, gamma by Adam), then 1 retrain epoch
    # standard with FT: the connector pre-training phase (paraphraser) and the main phase (student + translator),
    # both through DistributedDataParallel (find_unused_parameters: the paraphraser gets no gradient in "train")
    "standard_ft": {"losses": {"ft": {"weight": 1.0, "pretrain_epochs": 1}}, "strategy": {"name": "standard"}},
    "abl": {"ce_weight": 0.1, "losses": {"kd": {"weight": 0.9, "temperature": 4.0}},
            "strategy": {"name": "abl", "options": {"search_epochs": 1, "warm_start_epochs": 0}}},
}


@pytest.mark.parametrize("strategy", sorted(ADAPTIVE))
def test_adaptive_strategies_two_processes_match_one(strategy, tmp_path, fmnist_root):
    """The strategies' own state (SAKD's policy and adapters, ABL's gamma) stays one job's state: 2 ranks x
    batch 16 end with the weights, and ABL with the gammas, of 1 process x batch 32 (4 steps per epoch).
    ``standard_ft``: a pre-training phase and a distiller with parameters, both trained through DDP."""
    torch.manual_seed(123)
    from adakd.engine.checkpoint import save_checkpoint
    from adakd.models import build_model

    teacher = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, widths=[8, 16, 16])
    save_checkpoint(tmp_path / "teacher.pt", {"model": teacher.state_dict()})

    def config(run_dir: Path) -> dict:
        cfg = tiny(fmnist_root, run_dir)
        cfg.update(ADAPTIVE[strategy], teacher={"name": "resnet8", "kwargs": {"widths": [8, 16, 16]},
                                                "checkpoint": str(tmp_path / "teacher.pt")})
        if strategy == "abl":
            cfg["data"]["val_fraction"] = 0.05
        return cfg

    one = in_process(config(tmp_path / "one"))
    cfg = tmp_path / "two.yaml"
    cfg.write_text(yaml.safe_dump(config(tmp_path / "two")))
    finish(torchrun(["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())],
                    cfg, "data.batch_size=16"))
    assert_close_weights(weights(tmp_path / "one"), weights(tmp_path / "two"))
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    if strategy == "abl":
        torch.testing.assert_close(torch.tensor(two["abl_gammas"]), torch.tensor(one["abl_gammas"]), atol=ATOL, rtol=0)
        assert one["abl_gammas"] != [[0.5, 0.5]] * len(one["abl_gammas"])  # the search moved gamma
    elif strategy == "sakd":
        fractions = []
        for spot in one["sakd_spots"]:  # the job's routed fraction, not rank 0's: the same draws
            key = f"route_teacher.{spot}"
            fractions.append(metrics(tmp_path / "one")[0][key])
            assert metrics(tmp_path / "two")[0][key] == fractions[-1]
        assert 0.0 < min(fractions) and max(fractions) < 1.0  # some samples routed, some not


def test_two_nodes_resume_a_one_process_checkpoint(tmp_path, fmnist_root, reference, monkeypatch):
    """1 process (batch 32) dies after 2 of 4 steps; 2 nodes x 1 process (batch 16 each) resume mid-epoch
    through a static rendezvous on 127.0.0.1 and end where the uninterrupted 1-process run ends."""
    run_dir = tmp_path / "moved"
    restore = kill_after_steps(monkeypatch, 3, lambda phase, call: call == 1)  # step 3 dies before its checkpoint:
    with pytest.raises(Killed):  # the run is left at position 2
        in_process(tiny(fmnist_root, run_dir))
    restore()
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["position"] == 2 and saved["loader"]["world_size"] == 1

    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump(tiny(fmnist_root, run_dir)))
    port = str(free_port())
    nodes = [torchrun(["--nnodes", "2", "--node_rank", str(r), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                       "--master_port", port], cfg, "data.batch_size=16", "--resume", "--allow-changes", "data.batch_size")
             for r in (0, 1)]
    outs = [finish(p) for p in nodes]
    assert "resuming" in outs[0]
    assert_close_weights(weights(reference), weights(run_dir))
    records = metrics(run_dir)
    assert [r["epoch"] for r in records] == [1]
    assert records[0]["test_top1"] == metrics(reference)[0]["test_top1"]
    assert records[0]["train_top1"] == metrics(reference)[0]["train_top1"]


def test_resume_position_across_world_sizes():
    class Loader:
        def __init__(self, w: int, b: int) -> None:
            self.world_size, self.batch_size = w, b

    state = {"epoch": 3, "step": 3 * 8 + 4, "position": 4,
             "loader": {"epoch": 3, "position": 4, "world_size": 1, "batch_size": 32}}
    loader_state, step, position = ranks.resume_position(state, Loader(4, 8), steps_per_epoch=8)
    assert (position, step) == (4, 28) and loader_state["world_size"] == 4  # 128 samples = 4 global batches
    loader_state, step, position = ranks.resume_position(state, Loader(2, 32), steps_per_epoch=4)
    assert (position, step) == (2, 14)  # 128 samples = 2 batches of 64
    from adakd.errors import CheckpointError

    with pytest.raises(CheckpointError, match="epoch-end checkpoint"):
        ranks.resume_position(state, Loader(3, 32), steps_per_epoch=2)  # 128 is not a multiple of 96
    at_end = {**state, "position": 0, "step": 24, "loader": {**state["loader"], "position": 0}}
    assert ranks.resume_position(at_end, Loader(3, 32), steps_per_epoch=2)[1:] == (6, 0)


def test_helpers_are_no_ops_in_one_process():
    assert ddp.world_size() == 1 and ddp.is_main() and ddp.rank() == 0
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    ddp.all_reduce_grads([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert ddp.all_finite(torch.tensor(1.0)) and not ddp.all_finite(torch.tensor(float("nan")))
    assert ddp.agree_min(None) is None and ddp.agree_any(True)
    assert ddp.run_on_main(lambda: 7) == 7


@pytest.mark.parametrize("value,expected", [("1", False), ("2", True), (" 4", True), ("x", False), ("", False)])
def test_launched_by_torchrun_reads_world_size_without_raising(value, expected, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", value)
    assert ddp.launched_by_torchrun() is expected


# ------------------------------------------------------------------------------------------ issue 17
def test_default_batchnorm_reports_the_checkpointed_models_accuracy(tmp_path, fmnist_root):
    """Bug 1 of issue 17: with ``sync_batchnorm: false`` (the default) each rank's BatchNorm running statistics
    follow its own shard. The test accuracy reported at an epoch end must be that of the model the run
    checkpoints (student.pt / best.pt), evaluated alone on the whole test split."""
    from adakd.api import evaluate_checkpoint

    run_dir = tmp_path / "two"
    cfg = tmp_path / "two.yaml"
    cfg.write_text(yaml.safe_dump(tiny(fmnist_root, run_dir, sync_batchnorm=False)))
    finish(torchrun(["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())],
                    cfg, "data.batch_size=16"))
    reported = metrics(run_dir)[-1]
    for which in ("final", "best"):
        alone = evaluate_checkpoint(run_dir, which, device="cpu")
        assert alone["count"] == 500
        assert alone["loss"] == pytest.approx(reported["test_loss"], abs=1e-5), which
        assert alone["top1"] == reported["test_top1"], which


NAN_ON_RANK_1 = '''
import torch.distributed as dist
from adakd.losses.base import register_distiller
from adakd.losses.kd import KD


@register_distiller
class KDNaNOnRank1(KD):
    """KD whose loss is NaN on rank 1 at step 1 only (one rank sees a non-finite loss, the others do not)."""

    name = "kd_nan_on_rank1"

    def forward(self, s, t, ctx):
        terms = super().forward(s, t, ctx)
        if dist.is_available() and dist.is_initialized() and dist.get_rank() == 1 and ctx.step == 1:
            terms = {k: v * float("nan") for k, v in terms.items()}
        return terms
'''


@pytest.mark.parametrize("strategy", ["abl", "standard"])
def test_skip_on_one_rank_is_a_decision_of_every_rank(strategy, tmp_path, fmnist_root):
    """Bug 2 of issue 17: ``on_nonfinite: skip`` and a NaN loss on rank 1 alone (step 1). Every rank must skip
    that step together; a rank that decides alone leaves the collectives mismatched (a hang, cut here by a
    30 s process-group timeout and a 200 s wall-clock limit)."""
    (tmp_path / "nan_plugin.py").write_text(NAN_ON_RANK_1)
    torch.manual_seed(123)
    from adakd.engine.checkpoint import save_checkpoint
    from adakd.models import build_model

    teacher = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, widths=[8, 16, 16])
    save_checkpoint(tmp_path / "teacher.pt", {"model": teacher.state_dict()})
    run_dir = tmp_path / "two"
    cfg = tiny(fmnist_root, run_dir, on_nonfinite="skip")
    cfg.update(imports=[str(tmp_path / "nan_plugin.py")], ce_weight=0.1, losses={"kd_nan_on_rank1": {"weight": 0.9}},
               teacher={"name": "resnet8", "kwargs": {"widths": [8, 16, 16]}, "checkpoint": str(tmp_path / "teacher.pt")})
    if strategy == "abl":
        cfg["strategy"] = {"name": "abl", "options": {"ablation": "fixed"}}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "adakd", "train", str(path), "data.batch_size=16"],
        env={**env(), "ADAKD_DIST_TIMEOUT_MIN": "0.5"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        pytest.fail("the job hung (ranks disagreed on the skip):\n" + out[-3000:])
    assert proc.returncode == 0, out[-3000:]
    assert metrics(run_dir)[-1]["skipped_steps"] == 1  # step 1, skipped by both ranks, counted once
