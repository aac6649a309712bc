"""The machine a bench ran on and the load it was under (numbers compare only on the same one)."""
from __future__ import annotations

import contextlib
import os
import platform
import time
from typing import Any

import torch

from ...runtime.device import cpu_info


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and the load it was under (the numbers are only comparable on the same one)."""
    cpu = cpu_info()
    env: dict[str, Any] = {"cpu": cpu["model"], "cpu_flags": cpu["flags"], "cpu_capability": cpu["capability"],
                           "isa_limits": cpu["isa_limits"],
                           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                           "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return env


__all__ = ["environment"]
