"""The teacher-output cache under DDP (issue 29, item 3), with real torchrun launches on this CPU (gloo,
``OMP_NUM_THREADS=1``, as tests/test_ddp.py):

* built by 2 processes (rank r builds the views v = r mod 2), the cache holds the very files a 1-process
  build writes (same names, same sha256), so its key stands for the same numbers however it was built;
* 2 processes of batch 16 training from one cache end at the weights of 1 process of batch 32 training
  from the same cache (within ``ATOL``, the tolerance of every 2-vs-1 check in test_ddp.py): each rank
  reads the cached teacher outputs of its own shard's rows.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from adakd.engine.checkpoint import save_checkpoint
from adakd.models import build_model
from test_ddp import assert_close_weights, env, finish, free_port, in_process, metrics, tiny, torchrun, weights

pytestmark = pytest.mark.extended  # torchrun jobs of 2 processes: CI stage 2 (`pytest -m extended`)

TEACHER = {"name": "resnet8", "kwargs": {"widths": [8, 16, 16]}}
VIEWS = 3  # an odd count: rank 0 builds views 0 and 2, rank 1 view 1


def config(root: Path, run_dir: Path, teacher: Path, cache: Path) -> dict:
    """test_ddp's tiny run (128 samples, batch 32, sync BN, fp32) with KD from a cached teacher, 2 epochs."""
    cfg = tiny(root, run_dir, epochs=2)
    cfg.update({"teacher": {**TEACHER, "checkpoint": str(teacher), "cache": str(cache), "cache_views": VIEWS,
                            "cache_dtype": "fp32"},
                "losses": {"kd": {"temperature": 4.0}}, "ce_weight": 0.1})
    return cfg


def digests(cache: Path) -> dict[str, str]:
    """sha256 of every file of a cache directory, by name (no temporaries or locks are left in it)."""
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(cache.iterdir()) if f.is_file()}


def build(cfg_file: Path, processes: int) -> str:
    adakd = ["-m", "adakd", "cache", "build", str(cfg_file)]
    if processes == 1:
        cmd = [sys.executable, *adakd]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *adakd]
    return finish(subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    model = build_model(TEACHER["name"], num_classes=10, in_channels=1, image_size=28, **TEACHER["kwargs"])
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_checkpoint(path, {"model": model.state_dict()})
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, fmnist_root, teacher) -> dict[int, Path]:
    """The cache built by 1 process and by 2 (``adakd cache build``, torchrun for 2)."""
    tmp = tmp_path_factory.mktemp("caches")
    out = {}
    for processes in (1, 2):
        cache = tmp / f"cache-{processes}"
        cfg_file = tmp / f"build-{processes}.yaml"
        cfg_file.write_text(yaml.safe_dump(config(fmnist_root, tmp / "unused", teacher, cache)))
        log = build(cfg_file, processes)
        assert f"{VIEWS}/{VIEWS} views (complete)" in log, log[-2000:]
        out[processes] = cache
    return out


def test_two_processes_build_the_same_cache_files_as_one(built):
    one, two = digests(built[1]), digests(built[2])
    assert sorted(one) == sorted(["cache.json"] + [f"{kind}-{v:05d}.{ext}" for v in range(VIEWS)
                                                   for kind, ext in (("logits", "npy"), ("pooled", "npy"),
                                                                     ("view", "json"))])
    assert one == two


def test_two_processes_training_from_one_cache_match_one_process(tmp_path, fmnist_root, teacher, built):
    cache = built[1]
    before = digests(cache)
    single = in_process(config(fmnist_root, tmp_path / "one", teacher, cache))
    assert single["epochs"] == 2
    cfg_file = tmp_path / "two.yaml"
    cfg_file.write_text(yaml.safe_dump(config(fmnist_root, tmp_path / "two", teacher, cache)))
    out = finish(torchrun(["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())],
                          cfg_file, "data.batch_size=16"))
    assert f"teacher outputs from cache {cache}" in out and "live teacher" not in out, out[-2000:]
    assert_close_weights(weights(tmp_path / "one"), weights(tmp_path / "two"))
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["test_top1"] for m in one] == [m["test_top1"] for m in two]
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], abs=1e-5)
    assert digests(cache) == before  # read, never rewritten
