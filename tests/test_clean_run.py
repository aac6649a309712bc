"""A clean run prints no warning (issue 29, item 6): the quick start (configs/fashion_mnist/kd.yaml, a KD
student and its scratch comparison) streamed from a tiny Fashion-MNIST subset, with every warning an error.

The subset is a folder of IDX files holding the first rows of the real ones, read whole (no
``data.train_subset``/``test_subset``, which would copy the rows): the reader's ``np.frombuffer`` arrays
are read-only, as the full dataset's are, and the streamed path once handed views of them to
``torch.from_numpy`` ("The given NumPy array is not writable").

Once in this process (``warnings.simplefilter("error")``, ``num_workers=0``: the decoding runs here too) and
once from the CLI with two worker processes (``-W error`` and ``PYTHONWARNINGS=error``, which the workers
inherit), so that a warning raised in a worker fails the run as well. No warning is filtered: none was found
that lies outside our control.
"""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from adakd.config import load_config
from adakd.data.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx, read_raw
from adakd.data.stream import _collate
from adakd.engine.trainer import train
from adakd.models import build_model

REPO = Path(__file__).resolve().parents[1]
QUICK_START = REPO / "configs" / "fashion_mnist" / "kd.yaml"


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory) -> Path:
    """The quick start's ResNet-20 teacher, untrained (the warnings do not depend on its accuracy)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet20.pt"
    torch.save(build_model("resnet20", num_classes=10, in_channels=1, image_size=28).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory, fmnist_root) -> Path:
    """The first 40 training and 30 test images of Fashion-MNIST as IDX files of their own."""
    src = fmnist_root / "fashion-mnist" if (fmnist_root / "fashion-mnist").is_dir() else fmnist_root
    out = tmp_path_factory.mktemp("tiny-fmnist") / "fashion-mnist"
    out.mkdir()
    for prefix, n in (("train", 40), ("t10k", 30)):
        for kind, magic in (("images-idx3", IMAGES_MAGIC), ("labels-idx1", LABELS_MAGIC)):
            name = f"{prefix}-{kind}-ubyte.gz"
            array = parse_idx(read_raw(src / name, ""), src / name, magic, "")[:n]
            header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
            (out / name).write_bytes(gzip.compress(header + array.tobytes()))
    return out.parent


def streamed_quick_start(root: Path, teacher: Path, out: Path, workers: int) -> list[str]:
    return [f"data.root={root}", "data.options.verify_checksum=false", "data.train_subset=null",
            "data.pipeline=stream", f"data.num_workers={workers}", "data.batch_size=16", "data.eval_batch_size=16", "teacher.recipe=null", f"teacher.checkpoint={teacher}",
            "train.epochs=1", "train.precision=fp32", "train.channels_last=false", "device=cpu",
            f"output_dir={out}", "progress=false"]


def test_the_streamed_quick_start_warns_nothing_in_process(tmp_path, tiny_fmnist, random_teacher, one_torch_thread):
    cfg = load_config(QUICK_START, streamed_quick_start(tiny_fmnist, random_teacher, tmp_path / "runs", 0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning raised during the run is an exception here
        summary = train(cfg, log=lambda m: None)
    assert summary["epochs"] == 1
    assert 0.0 <= summary["scratch"]["last_top1"] <= 100.0  # the scratch comparison ran too


def test_the_streamed_quick_start_warns_nothing_from_the_cli_with_workers(tmp_path, tiny_fmnist, random_teacher):
    env = {**os.environ, "PYTHONWARNINGS": "error", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-W", "error", "-m", "adakd", "train", str(QUICK_START),
                          *streamed_quick_start(tiny_fmnist, random_teacher, tmp_path / "runs", 2)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Warning" not in out.stderr and "Warning" not in out.stdout, out.stderr


def test_a_batch_of_read_only_views_becomes_a_writable_tensor_of_its_own():
    """What the fix does: samples that are read-only views of a dataset (``np.frombuffer`` of an IDX file)
    are copied into a new array PyTorch owns; writing into the batch leaves the dataset alone."""
    images = np.frombuffer(bytes(range(2 * 4)), dtype=np.uint8).reshape(2, 1, 2, 2)
    assert not images.flags.writeable
    flipped = images[1][:, :, ::-1]  # a strided view, as PadCropFlip's flip returns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, y, rows = _collate([(images[0], 3, 0, None), (flipped, 5, 1, None)])
    assert x.dtype == torch.uint8 and x.shape == (2, 1, 2, 2) and x.is_contiguous()
    assert x[0].flatten().tolist() == [0, 1, 2, 3] and x[1].flatten().tolist() == [5, 4, 7, 6]
    assert y.tolist() == [3, 5] and rows.tolist() == [0, 1]
    x += 1  # writable, and not the dataset's memory
    assert images.flatten().tolist() == list(range(8))
