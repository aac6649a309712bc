"""Device, precision and memory-format facts (device-agnostic: nothing here requires a GPU).

Which precision and memory format a run uses is measured, not read from a flag: runtime/timing.py (the rule, the timing)
and engine/probe.py (a run's own training step timed)."""
from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path
from typing import Any

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


#: CPU flags worth recording beside a timing: what the fast-path candidates can use.
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def cpu_info() -> dict[str, Any]:
    """The CPU's model name, the :data:`CPU_FLAGS` it has and torch's kernel level (e.g. ``AVX512``).

    Recorded with every timing and in the fast-path probe's cache key: the same model can be 3x
    faster in bf16 on one machine (AMX) and slower on another (no AMX), so a number without the
    CPU it came from means nothing."""
    model, flags = _cpuinfo()
    return {"model": model, "flags": {f: f in flags for f in CPU_FLAGS},
            "capability": torch.backends.cpu.get_cpu_capability(), "isa_limits": isa_limits()}


#: Environment variables that cap the instruction set PyTorch's kernels use (ATen's dispatch and oneDNN's
#: convolutions / matmuls): e.g. ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 makes an AVX-512 CPU
#: run as an AVX2-only one (no AVX-512, no avx512_bf16).
ISA_LIMIT_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def isa_limits() -> dict[str, str]:
    """The instruction-set caps set in this process's environment (empty when none)."""
    return {k: os.environ[k] for k in ISA_LIMIT_ENV if os.environ.get(k)}


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; the platform's processor string elsewhere."""
    model, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def device_model(device: torch.device) -> str:
    """What the device is, for cache keys and reports: the GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    limits = isa_limits()  # a capped instruction set is another machine for timing purposes
    return _cpuinfo()[0] + (" [" + ", ".join(f"{k}={v}" for k, v in sorted(limits.items())) + "]" if limits else "")


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs on ``device`` at all (fast or not: the fast-path probe measures that).

    CPU autocast runs bf16 everywhere (emulated without avx512_bf16/AMX); CUDA needs Ampere or later."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def fp16_candidate(device: torch.device) -> bool:
    """Whether ``precision: auto`` times fp16 on ``device``: on CUDA only (every CUDA GPU has fast fp16: T4 and
    V100 have tensor cores for fp16, none for bf16). On a CPU fp16 autocast runs (torch >= 2.4) but is not
    offered: no CPU this project measured runs it faster than bf16 or fp32; name ``precision: fp16`` to use it."""
    return device.type == "cuda"


#: Autocast dtype of each reduced precision.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 / fp16 autocast for ``precision == 'bf16' / 'fp16'``, a no-op otherwise."""
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


def new_grad_scaler(device: torch.device, precision: str) -> "torch.amp.GradScaler | None":
    """fp16's dynamic loss scaling (``torch.amp.GradScaler`` of the device's type); None for other precisions.

    The loss is multiplied by the scale S before the backward, the gradients divided by S before the step;
    a step whose gradients hold an inf/NaN is skipped and S halved, S doubled after 2000 clean steps."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` for loss arithmetic: bf16/fp16 upcast to float32, float32 and float64 (gradchecks) kept."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def autocast_off(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context with autocast off on ``x``'s device (Gram matrices, kernels and SVDs stay in full precision)."""
    return torch.autocast(device_type=x.device.type, enabled=False)
