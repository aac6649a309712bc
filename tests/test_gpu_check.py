"""scripts/gpu_check.py, the GPU check, where no GPU is: it refuses clearly, and its precision stage (every
distiller in fp32, bf16 and fp16 autocast, one fp16 GradScaler step) runs on the CPU's autocast."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script would run")
def test_without_cuda_the_script_exits_2_naming_the_fix(tmp_path):
    env = {**os.environ, "ADAKD_DATA": str(tmp_path), "OUT": str(tmp_path / "out")}
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert "no CUDA device" in out.stderr and "--dry-run" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()  # nothing written
    env.pop("ADAKD_DATA")
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 2 and "set ADAKD_DATA" in out.stderr


def test_the_precision_stage_runs_every_distiller_on_the_cpu(one_torch_thread):
    from adakd.registry import DISTILLERS

    result = load_script().precision_smoke("cpu", batch_size=16)
    rows = result["distillers"]
    assert sorted(rows) == sorted(e.name for e in DISTILLERS.entries())
    for name, row in rows.items():
        assert math.isfinite(row["fp32"]) and math.isfinite(row["bf16"]), (name, row)
        assert row["bf16_rel"] < 0.1, (name, row)  # bf16 autocast: within a few bf16 roundings of fp32
    assert result["ok"] and result["nonfinite_fp32_or_bf16"] == []
