"""``adakd train --dry-run`` finds a config's mistakes before anything trains: names, typed options, the
dataset's files, and every component built and stepped once on a random batch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KD = REPO / "configs" / "fashion_mnist" / "kd.yaml"


def dry_run(*overrides: str, config: Path = KD, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adakd", "train", str(config), *overrides, "--dry-run"],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_a_good_config_is_built_and_stepped(tmp_path, fmnist_root):
    out = dry_run(f"data.root={fmnist_root}", f"output_dir={tmp_path / 'runs'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "config OK" in out.stderr and "stepped once on a random batch" in out.stderr
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


@pytest.mark.parametrize("override, message", [
    ("losses.kd.temprature=4", "losses.kd.temprature: unknown option. Did you mean 'temperature'"),
    ("losses.kd.temperature=hot", "losses.kd.temperature: Input should be a valid number"),
    ("student.name=resnet9", "unknown model 'resnet9'. Did you mean"),
    ("student.kwargs.widthz=[8,16,32]", "unknown option(s) ['widthz']"),
    ("strategy.name=sakd", None),  # valid: SAKD wraps KD; built and stepped
    ("strategy.options.routing=sometimes", "has no option|unknown option"),
])
def test_config_mistakes_are_found_before_training(tmp_path, fmnist_root, override, message):
    out = dry_run(f"data.root={fmnist_root}", f"output_dir={tmp_path / 'runs'}", override, cwd=tmp_path)
    if message is None:
        assert out.returncode == 0, out.stderr
        return
    assert out.returncode == 2, out.stderr
    import re

    assert re.search(message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]"),
                     out.stderr), out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_data_files_are_found(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = dry_run(f"data.root={empty}", cwd=tmp_path)
    assert out.returncode == 2
    assert "fashion" in out.stderr.lower() and "Traceback" not in out.stderr


def test_abl_and_a_pretraining_distiller_are_stepped_in_every_phase(fmnist_root, tmp_path):
    from adakd.config import load_config
    from adakd.engine.components import check_config

    abl = check_config(load_config(REPO / "configs" / "fashion_mnist" / "abl_kd.yaml", [f"data.root={fmnist_root}"]),
                       data=False)
    assert abl["phases"] == ["search", "train"]
    ft = check_config(load_config(REPO / "configs" / "fashion_mnist" / "ft.yaml", [f"data.root={fmnist_root}"]),
                      data=False)
    assert ft["phases"] == ["pretrain", "train"]
