"""Peak memory of a stretch of work (CUDA: peak allocated; CPU: growth of the resident set)."""
from __future__ import annotations

import contextlib
import ctypes
import gc
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a stretch of work, in MB. CUDA: peak allocated bytes above the start.
    CPU (Linux): growth of the peak resident set (``VmHWM`` reset through ``/proc/self/clear_refs``)
    above the resident set at the start, after returning freed heap to the system; None elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base: float | None = None

    @staticmethod
    def _status(key: str) -> float | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return float(line.split()[1]) / 1024.0  # kB -> MB
        except OSError:
            pass
        return None

    def start(self) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
            return
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.base = None
            return
        self.base = self._status("VmRSS")

    def stop(self) -> float | None:
        if self.base is None:
            return None
        if self.device.type == "cuda":
            sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.base
        peak = self._status("VmHWM")
        return None if peak is None else max(peak - self.base, 0.0)


__all__ = ["PeakMemory", "sync"]
