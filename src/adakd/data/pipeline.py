"""Which pipeline a run takes: the device-resident one when the decoded data fits a memory budget, else streaming.

``data.pipeline``: ``device`` (every image decoded once, held as uint8 on the training device),
``stream`` (decoded by worker processes each epoch, :mod:`adakd.data.stream`) or ``auto``.
``auto`` takes ``device`` when the decoded train + test splits fit ``data.memory_budget`` and the
augmentation recipe can run on decoded squares (the ImageNet recipe crops from the original files,
so it always streams). The budget: ``None`` = half the free memory of the training device (host
memory for the CPU); a number in (0, 1] = that fraction of it; a larger number = bytes; or a string
such as ``"12GB"``, ``"800MB"``, ``"25%"``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from ..errors import ConfigError

DEFAULT_FRACTION = 0.5
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def free_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what they are) free on ``device``: CUDA's free memory, else the host's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {device}"
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available host memory"
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(pages), "available host memory"


def parse_budget(value: float | int | str | None, free: int) -> int:
    """The budget in bytes of ``data.memory_budget`` (see the module docstring) given ``free`` bytes."""
    if value is None:
        return int(DEFAULT_FRACTION * free)
    if isinstance(value, str):
        text = value.strip().upper().replace(" ", "")
        if text.endswith("%"):
            try:
                return int(float(text[:-1]) / 100 * free)
            except ValueError:
                pass
        match = re.fullmatch(r"([0-9]*\.?[0-9]+)([KMGT]I?B|B)?", text)
        if match is None:
            raise ConfigError(f"data.memory_budget={value!r}: write bytes (e.g. 12GB, 800MB), a percentage of the "
                              "free memory (25%) or a fraction (0.25).")
        return int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if value <= 0:
        raise ConfigError(f"data.memory_budget={value} must be positive.")
    return int(value * free) if value <= 1 else int(value)


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


@dataclass(frozen=True)
class PipelineChoice:
    """The resolved pipeline and why."""

    name: str  # "device" or "stream"
    requested: str
    decoded_bytes: int
    budget: int | None
    budget_source: str
    reason: str

    def describe(self) -> str:
        budget = "" if self.budget is None else f", budget {gigabytes(self.budget)} ({self.budget_source})"
        return (f"data pipeline: {self.name} (data.pipeline={self.requested}; decoded train+test "
                f"{gigabytes(self.decoded_bytes)}{budget}; {self.reason})")


def choose_pipeline(requested: str, decoded_bytes: int, recipe: str, device: torch.device,
                    budget: float | int | str | None = None) -> PipelineChoice:
    """Resolve ``data.pipeline`` for data that would take ``decoded_bytes`` once decoded."""
    if requested not in ("auto", "device", "stream"):
        raise ConfigError(f"data.pipeline={requested!r}: use auto, device or stream.")
    if requested == "device" and recipe == "imagenet":
        raise ConfigError("the imagenet recipe (RandomResizedCrop from the original image) cannot run on the "
                          "device-resident pipeline, which holds resized squares: set data.pipeline=stream "
                          "(or data.recipe=pad_crop_flip).")
    if requested != "auto":
        return PipelineChoice(requested, requested, decoded_bytes, None, "", "as configured")
    free, what = free_memory(device)
    limit = parse_budget(budget, free)
    source = f"{'default ' if budget is None else ''}{budget if budget is not None else '50%'} of {gigabytes(free)} {what}"
    if recipe == "imagenet":
        return PipelineChoice("stream", "auto", decoded_bytes, limit, source,
                              "the imagenet recipe crops from the original files")
    if decoded_bytes <= limit:
        return PipelineChoice("device", "auto", decoded_bytes, limit, source, "fits the budget")
    return PipelineChoice("stream", "auto", decoded_bytes, limit, source, "does not fit the budget")
