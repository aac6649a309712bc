"""The machine a bench ran on and the load it was under (numbers compare only on the same one)."""
from __future__ import annotations

import contextlib
import os
import platform
import time
from typing import Any

import torch

from ...runtime.device import cpu_info


def cpu_class(cpu: dict[str, Any]) -> str:
    """The CPU's class for bf16 training: ``amx_bf16``, ``avx512_bf16``, ``avx2`` (AVX2 only) or torch's
    kernel level otherwise; under an instruction-set cap (:func:`isa_limits`), the capped kernel level."""
    flags = cpu["flags"]
    if cpu.get("isa_limits"):
        return f"capped: {cpu['capability']}"
    for flag in ("amx_bf16", "avx512_bf16"):
        if flags.get(flag):
            return flag
    if flags.get("avx2") and not flags.get("avx512f"):
        return "avx2"
    return str(cpu["capability"])


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and the load it was under (the numbers are only comparable on the same one)."""
    cpu = cpu_info()
    env: dict[str, Any] = {"cpu": cpu["model"], "cpu_class": cpu_class(cpu), "cpu_flags": cpu["flags"], "cpu_capability": cpu["capability"],
                           "isa_limits": cpu["isa_limits"],
                           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                           "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return env


__all__ = ["environment", "cpu_class"]
