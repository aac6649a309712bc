"""Device, precision and memory-format decisions (device-agnostic: nothing here requires a GPU)."""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if present (else mps, else cpu); otherwise the named device, checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available here: set device=cpu or device=auto.")
    return device


@functools.lru_cache(maxsize=None)
def cpu_has_amx_bf16() -> bool:
    """True when the CPU advertises AMX bf16 tiles (bf16 matmuls/convs much faster than fp32)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def bf16_is_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_amx_bf16()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the hardware runs it fast, else fp32."""
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return precision


def resolve_channels_last(channels_last: bool | str, precision: str) -> bool:
    if channels_last == "auto":
        return precision == "bf16"
    return bool(channels_last)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision == 'bf16'``, a no-op otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
