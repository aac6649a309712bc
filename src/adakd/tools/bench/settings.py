"""What a bench measures: its cases (losses x strategy x phase), settings, suites and the two paths' specs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: CIFAR-100's normalisation (the default random data set is CIFAR-shaped).
CIFAR_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR_STD = (0.2675, 0.2565, 0.2761)
PATHS = ("eager", "fast")


@dataclass
class BenchCase:
    """One step to measure: losses x strategy (+ options) x phase (None: the main schedule, the last)."""

    label: str
    losses: dict[str, dict[str, Any]] = field(default_factory=lambda: {"kd": {}})
    strategy: str = "standard"
    options: dict[str, Any] = field(default_factory=dict)
    phase: str | None = None
    #: Weight of the student's cross-entropy (a config's ``ce_weight``).
    ce_weight: float = 1.0
    #: Label of the case whose step time this case's overhead is relative to (same path, same batch).
    baseline: str | None = None


@dataclass
class BenchSettings:
    """The models, data shape, paths and timing of a bench."""

    teacher: str = "resnet32x4"
    student: str = "resnet8x4"
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    student_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 100
    in_channels: int = 3
    image_size: int = 32
    crop_padding: int = 4
    batch_sizes: list[int] = field(default_factory=lambda: [64])
    device: str = "auto"
    paths: tuple[str, ...] = PATHS
    #: The fast path's switches (resolved as in training: auto = the fast-path probe's pick per case and batch).
    precision: str = "auto"
    channels_last: bool | str = "auto"
    #: Also time the fast path under every other candidate precision x memory format the probe weighs.
    candidates: bool = True
    compile: bool = False
    compile_mode: str = "auto"
    compile_cache_dir: str | None = None
    #: Untimed windows first (the first also compiles), then timed windows of ``window`` steps each.
    warmup: int = 2
    repeats: int = 7
    window: int = 1
    #: Batches timed for the data pipeline alone.
    data_batches: int = 8
    #: Rows of the random data set (uint8 images, uniform labels).
    dataset_size: int = 1024
    threads: int | None = None
    seed: int = 0
    lr: float = 0.05


@dataclass(frozen=True)
class PathSpec:
    """How one path trains: numerics, memory format, compile, data pipeline, host syncs."""

    name: str
    precision: str  # "auto" in the settings' spec: the probe's pick, per case and batch
    channels_last: bool | str
    compile: bool
    compile_mode: str
    data: str  # "per-sample-cpu" | "device"
    sync_every_step: bool
    optimizer: str  # "torch-default" | "foreach/fused"


SUITES: dict[str, list[BenchCase]] = {
    "kd": [BenchCase("kd")],
    "adaptive": [
        BenchCase("kd"),
        BenchCase("sakd(kd)", strategy="sakd", baseline="kd"),
        BenchCase("abl(kd) search", strategy="abl", options={"warm_start_steps": 0}, phase="search", baseline="kd"),
        BenchCase("abl(kd) retrain", strategy="abl", options={"warm_start_steps": 0}, phase="train", baseline="kd"),
        BenchCase("abl(kd) retrain, aux1 heads", strategy="abl", options={"warm_start_steps": 0, "aux": "aux1"},
                  phase="train", baseline="kd"),
        BenchCase("dkd", losses={"dkd": {}}),
        BenchCase("aekt", losses={"aekt": {}}, baseline="dkd"),
    ],
}


def mean_std(s: BenchSettings) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation of the random data: CIFAR-100's for 3 channels, 0.5 / 0.25 per channel otherwise."""
    if s.in_channels == 3:
        return CIFAR_MEAN, CIFAR_STD
    return (0.5,) * s.in_channels, (0.25,) * s.in_channels


__all__ = ["BenchCase", "BenchSettings", "PathSpec", "SUITES", "PATHS", "CIFAR_MEAN", "CIFAR_STD", "mean_std"]
