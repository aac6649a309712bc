"""The stream pipeline in whole runs: without augmentation a streamed run ends bitwise equal to a device-resident
one (same rows, same pixels, same order); with torchrun, 2 ranks x batch 16 streamed end with the weights of
1 process x batch 32 streamed, for the standard strategy and for ABL (held-out validation batches drawn from
the streamed validation split). Fashion-MNIST IDX files, streamed from their arrays (workers 2 and 0)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from test_ddp import ADAPTIVE, assert_close_weights, finish, free_port, in_process, tiny, torchrun, weights


def streamed(cfg: dict, workers: int = 2) -> dict:
    cfg["data"].update(pipeline="stream", num_workers=workers)
    return cfg


def test_unaugmented_streamed_run_equals_the_device_resident_run(tmp_path, fmnist_root):
    device = tiny(fmnist_root, tmp_path / "device")
    device["data"]["augment"] = False
    stream = streamed(tiny(fmnist_root, tmp_path / "stream"))
    stream["data"]["augment"] = False
    a, b = in_process(device), in_process(stream)
    wa, wb = weights(tmp_path / "device"), weights(tmp_path / "stream")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["last_top1"] == b["last_top1"]


@pytest.mark.parametrize("strategy", ["standard", "abl"])
def test_two_streamed_ranks_match_one_streamed_process(strategy, tmp_path, fmnist_root):
    from adakd.engine.checkpoint import save_checkpoint
    from adakd.models import build_model

    def config(run_dir: Path, workers: int) -> dict:
        cfg = streamed(tiny(fmnist_root, run_dir), workers)
        if strategy == "abl":
            torch.manual_seed(123)
            teacher = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, widths=[8, 16, 16])
            save_checkpoint(tmp_path / "teacher.pt", {"model": teacher.state_dict()})
            cfg.update(ADAPTIVE["abl"], teacher={"name": "resnet8", "kwargs": {"widths": [8, 16, 16]},
                                                 "checkpoint": str(tmp_path / "teacher.pt")})
            cfg["data"]["val_fraction"] = 0.05
        return cfg

    in_process(config(tmp_path / "one", workers=0))
    cfg = tmp_path / "two.yaml"
    cfg.write_text(yaml.safe_dump(config(tmp_path / "two", workers=2 if strategy == "standard" else 0)))
    out = finish(torchrun(["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())],
                          cfg, "data.batch_size=16"))
    assert "data pipeline: stream" in out
    assert_close_weights(weights(tmp_path / "one"), weights(tmp_path / "two"))
