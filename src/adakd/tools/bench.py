"""``adakd bench``: training-step throughput of the eager baseline and the fast path, side by side.

    adakd bench                                   # KD resnet32x4 -> resnet8x4, batch 64, random CIFAR-shaped data
    adakd bench --batch-size 64 128 --out bench.json
    adakd bench --suite adaptive                  # SAKD, ABL (search, retrain) over KD; AEKT over DKD
    adakd bench --strategy sakd --losses "{at: {}}" --paths fast

For each case (teacher, student, losses, strategy and one of its phases) and batch size, the step
measured is the strategy's own ``Phase.step`` (what training runs), on two paths built in the same
process from the same weights:

* **eager**, the common KD code base: fp32, NCHW, a per-sample CPU transform like torchvision's
  ``RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor + Normalize`` with ``torch.stack``
  collation, the default ``torch.optim.SGD``, and a host sync every step (``loss.item()`` and the
  accuracy, as its meters do);
* **fast**, adakd's training path (:mod:`adakd.engine.fast`): the data set on the device with
  batched augmentation (``DeviceLoader``), the precision and memory format training would take
  (``auto``: the fast-path probe of :mod:`adakd.engine.probe`, run afresh on this case and batch,
  never read from its cache; ``$ADAKD_PRECISION`` / ``$ADAKD_CHANNELS_LAST`` apply as in training),
  optionally ``torch.compile``, foreach/fused SGD, no host sync inside a timing window;
* with ``candidates`` (the default), the fast path also under every other precision x memory format
  the probe weighs (paths ``fp32 NCHW``, ``fp32 CL``, ``bf16 NCHW``, ``bf16 CL``), so the table shows
  whether the probe's short timing picked what the long one finds fastest.

The paths are timed interleaved (window by window), so a shared machine's load hits all alike.
images/s = batch x steps / seconds of a window; reported: the median over windows with the
quartiles and extremes; the data pipeline alone (images/s); the peak memory of a step (CUDA: peak
allocated; CPU: growth of the resident set, Linux ``VmHWM``, approximate); the ratio fast/eager;
and the first step's loss on both paths from the same weights and the same batch (the fast path
must agree within bf16 noise). Strategies not registered in this build are skipped with a note.
The environment records the CPU model, its AMX/AVX-512/AVX2 flags and torch's kernel level
(``torch.backends.cpu.get_cpu_capability()``), threads and torch version: bf16 is 3x faster than
fp32 on one CPU (AMX) and slower on another, so a number is only meaningful with its machine.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml

from .. import losses as _losses  # noqa: F401  (registers the distillers)
from .. import strategies as _strategies  # noqa: F401  (registers the strategies)
from ..config import OptimizerConfig
from ..data import Batch, DeviceLoader
from ..runtime.device import cpu_info, resolve_device
from ..runtime.atomic import atomic_write_json
from ..engine.components import ComponentSpec, build_components, build_phase_optimizer
from ..engine.fast import compile_models
from ..engine.optim import parameters_of
from ..engine.probe import Candidate, FastPath, StepBuilder, candidates, format_ms, resolve_fast_path, time_steps
from ..errors import AdakdError, ConfigError
from ..losses.base import DistillContext
from ..models import build_model
from ..registry import STRATEGIES
from ..strategies import Phase

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


# ----------------------------------------------------------------------------- data paths

def random_dataset(n: int, shape: tuple[int, int, int], num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uniform uint8 images ``[n, C, H, W]`` and uniform labels (CPU), from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    return images, labels


class PerSampleLoader:
    """The eager baseline's input pipeline: torchvision-style per-sample CPU transforms.

    Holds HWC uint8 arrays (as torchvision's CIFAR does); per sample: zero-pad by ``padding``, a
    random crop, a random horizontal flip, ``ToTensor`` (CHW float / 255) and ``Normalize``; then
    ``torch.stack`` and ``.to(device)`` (``num_workers=0``: the work is on the training process).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, padding: int,
                 mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, seed: int = 0) -> None:
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.numpy()
        self.batch_size, self.padding, self.device = batch_size, padding, device
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.rng = np.random.default_rng(seed)

    def sample(self, i: int) -> torch.Tensor:
        img = self.images[i]
        h, w = img.shape[:2]
        p = self.padding
        if p:
            img = np.pad(img, ((p, p), (p, p), (0, 0)))
            top, left = self.rng.integers(0, 2 * p + 1, size=2)
            img = img[top:top + h, left:left + w]
        if self.rng.random() < 0.5:
            img = img[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
        return x.sub_(self.mean).div_(self.std)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.labels)
        while True:
            order = self.rng.permutation(n)
            for start in range(0, n - self.batch_size + 1, self.batch_size):
                rows = order[start:start + self.batch_size]
                x = torch.stack([self.sample(int(i)) for i in rows])
                y = torch.from_numpy(self.labels[rows])
                yield Batch(x.to(self.device), y.to(self.device), torch.from_numpy(rows).to(self.device))


def _cycle(loader: DeviceLoader) -> Iterator[Batch]:
    while True:
        yield from loader


# ----------------------------------------------------------------------------- paths

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


def resolve_paths(settings: BenchSettings, device: torch.device) -> dict[str, PathSpec]:
    """The eager and fast paths of the settings; the fast path's ``auto`` switches stay ``auto`` until
    :func:`case_paths` probes them on a case's models."""
    if settings.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"bench precision {settings.precision!r}: use auto, fp32 or bf16.")
    specs = {
        "eager": PathSpec("eager", "fp32", False, False, "-", "per-sample-cpu", True, "torch-default"),
        "fast": PathSpec("fast", settings.precision, settings.channels_last, settings.compile,
                         settings.compile_mode if settings.compile else "-", "device", False, "foreach/fused"),
    }
    unknown = [p for p in settings.paths if p not in specs]
    if unknown:
        raise ConfigError(f"unknown bench path(s) {unknown}: use {', '.join(PATHS)}.")
    return {p: specs[p] for p in settings.paths}


def rig_step_builder(case: BenchCase, settings: BenchSettings, batch_size: int, device: torch.device,
                     data: tuple[torch.Tensor, torch.Tensor], base: PathSpec) -> StepBuilder:
    """The probe's step for a bench case: one step of a :class:`Rig` of ``base`` under the candidate."""
    def build(c: Candidate) -> Callable[[], None]:
        spec = replace(base, precision=c.precision, channels_last=c.channels_last, compile=False)  # eager: seconds
        rig = Rig(case, settings, spec, batch_size, device, data)
        return lambda: float(rig.step(next(rig.batches))["loss"])

    return build


def case_paths(case: BenchCase, settings: BenchSettings, batch_size: int, device: torch.device,
               specs: dict[str, PathSpec], data: tuple[torch.Tensor, torch.Tensor]
               ) -> tuple[dict[str, PathSpec], FastPath | None]:
    """The paths of one case and batch: ``fast`` resolved (probed where ``auto``), then with
    ``settings.candidates`` every other candidate the probe weighs, named by its label."""
    fast = specs.get("fast")
    if fast is None:
        return specs, None
    probe = resolve_fast_path(fast.precision, fast.channels_last, device, timer=lambda options: time_steps(
        rig_step_builder(case, settings, batch_size, device, data, fast), options))  # no key: never cached
    resolved = replace(fast, precision=probe.precision, channels_last=probe.channels_last)
    out = {**specs, "fast": resolved}
    if settings.candidates:
        for c in candidates(settings.precision, settings.channels_last, device):
            if (c.precision, c.channels_last) != (resolved.precision, resolved.channels_last):
                out[c.label] = replace(resolved, name=c.label, precision=c.precision, channels_last=c.channels_last)
    return out, probe


def _sync(device: torch.device) -> None:
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
            _sync(self.device)
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
            _sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.base
        peak = self._status("VmHWM")
        return None if peak is None else max(peak - self.base, 0.0)


class Rig:
    """Models, strategy phase, optimiser and data of one (case, batch, path), ready to step."""

    def __init__(self, case: BenchCase, settings: BenchSettings, spec: PathSpec, batch_size: int,
                 device: torch.device, data: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.case, self.spec, self.device, self.batch_size = case, spec, device, batch_size
        s = settings
        images, labels = data
        loader_args = dict(mean=_mean_std(s)[0], std=_mean_std(s)[1], device=device,
                           channels_last=spec.channels_last)
        fast_train = DeviceLoader(images, labels, batch_size=batch_size, shuffle=True, augment=True,
                                  crop_padding=s.crop_padding, flip=True, drop_last=True, seed=s.seed, **loader_args)
        self.val = DeviceLoader(images, labels, batch_size=batch_size, drop_last=True, **loader_args)
        if spec.data == "device":
            self.batches: Iterator[Batch] = _cycle(fast_train)
        else:
            self.batches = iter(PerSampleLoader(images, labels, batch_size, s.crop_padding, *_mean_std(s), device,
                                                seed=s.seed))
        torch.manual_seed(s.seed)  # the same weights on every path
        self.teacher = build_model(s.teacher, num_classes=s.num_classes, in_channels=s.in_channels,
                                   image_size=s.image_size, **s.teacher_kwargs)
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = build_model(s.student, num_classes=s.num_classes, in_channels=s.in_channels,
                                   image_size=s.image_size, **s.student_kwargs)
        parts = build_components(
            ComponentSpec(losses=case.losses, strategy=case.strategy, strategy_options=dict(case.options),
                          seed=s.seed), self.student, self.teacher, device=device, precision=spec.precision,
            channels_last=spec.channels_last, num_classes=s.num_classes, num_train=len(labels),
            steps_per_epoch=len(fast_train), val_loader=self.val, test_loader=self.val)
        self.distiller, self.strategy = parts.distiller, parts.strategy
        self.phase = _pick_phase(parts.phases, case)
        if self.phase.on_start is not None:
            self.phase.on_start()
        self.strategy.on_epoch_start(0)
        params = parameters_of(self.phase.modules)
        if spec.optimizer == "torch-default":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=s.lr, momentum=0.9, weight_decay=5e-4)
        else:
            self.optimizer = build_phase_optimizer(self.phase, OptimizerConfig(lr=s.lr), s.lr, device)
        if spec.compile:
            cache = s.compile_cache_dir or os.path.join(tempfile.gettempdir(), "adakd-bench-inductor")
            compile_models([self.student, self.teacher], device, spec.compile_mode, static_shapes=True,
                           cache_dir=cache)
        self.phase.model.train()
        self.steps = 0
        self.loss_sum = torch.zeros((), device=device)

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        ctx = DistillContext(labels=batch.y, indices=batch.index, epoch=0, step=self.steps, epochs_total=1,
                             progress=0.0)
        terms = self.phase.step(batch, ctx, self.optimizer)
        self.steps += 1
        if self.spec.sync_every_step:  # the common code bases' meters: loss.item(), accuracy per step
            self.last_loss = float(terms["loss"])
            int(terms["correct"])
        else:
            self.loss_sum = self.loss_sum + terms["loss"].detach()
        return terms

    def window(self, steps: int) -> tuple[float, float]:
        """Run ``steps`` steps on fresh batches; return (seconds, mean loss), synced at the end."""
        _sync(self.device)
        start = time.perf_counter()
        self.loss_sum = torch.zeros((), device=self.device)
        total = 0.0
        for _ in range(steps):
            self.step(next(self.batches))
            if self.spec.sync_every_step:
                total += self.last_loss
        _sync(self.device)
        seconds = time.perf_counter() - start
        mean = total / steps if self.spec.sync_every_step else float(self.loss_sum) / steps
        return seconds, mean

    def data_rate(self, batches: int) -> float:
        """Images per second of the data pipeline alone."""
        next(self.batches)
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(batches):
            next(self.batches)
        _sync(self.device)
        return batches * self.batch_size / (time.perf_counter() - start)

    def first_step(self, images: torch.Tensor, labels: torch.Tensor, settings: BenchSettings) -> float:
        """One step on a fixed, un-augmented batch (the same on every path); its loss."""
        mean, std = _mean_std(settings)
        loader = DeviceLoader(images, labels, mean=mean, std=std, batch_size=self.batch_size, device=self.device,
                              channels_last=self.spec.channels_last)
        batch = loader.batch(torch.arange(self.batch_size, device=self.device))
        return float(self.step(batch)["loss"])


def _mean_std(s: BenchSettings) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if s.in_channels == 3:
        return CIFAR_MEAN, CIFAR_STD
    return (0.5,) * s.in_channels, (0.25,) * s.in_channels


def _pick_phase(phases: list[Phase], case: BenchCase) -> Phase:
    if case.phase is None:
        return phases[-1]
    for phase in phases:
        if phase.name == case.phase:
            return phase
    raise ConfigError(f"strategy {case.strategy!r} has no phase {case.phase!r} here "
                      f"(its phases: {', '.join(p.name for p in phases)}).")


# ----------------------------------------------------------------------------- measuring

def _summary(rates: list[float]) -> dict[str, float]:
    q = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else [rates[0]] * 3
    return {"median": statistics.median(rates), "q1": q[0], "q3": q[2], "min": min(rates), "max": max(rates)}


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


def measure_case(case: BenchCase, settings: BenchSettings, batch_size: int, device: torch.device,
                 specs: dict[str, PathSpec], log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Both paths of one case at one batch size, interleaved; see the module docstring."""
    record: dict[str, Any] = {"case": case.label, "strategy": case.strategy, "losses": case.losses,
                              "options": case.options, "batch_size": batch_size, "baseline": case.baseline}
    if case.strategy not in STRATEGIES:
        record["skipped"] = (f"strategy {case.strategy!r} is not registered in this build "
                             f"(registered: {', '.join(STRATEGIES.names())})")
        return record
    s = settings
    shape = (s.in_channels, s.image_size, s.image_size)
    data = random_dataset(max(s.dataset_size, 2 * batch_size), shape, s.num_classes, s.seed)
    try:
        specs, probe = case_paths(case, s, batch_size, device, specs, data)
        rigs = {name: Rig(case, s, spec, batch_size, device, data) for name, spec in specs.items()}
    except AdakdError as exc:
        record["skipped"] = f"{type(exc).__name__}: {exc}"
        return record
    record["phase"] = next(iter(rigs.values())).phase.name
    paths: dict[str, dict[str, Any]] = {name: {**asdict(spec), "rates": [], "peak_mb": None}
                                        for name, spec in specs.items()}
    fixed_x, fixed_y = data[0][:batch_size], data[1][:batch_size]
    for name, rig in rigs.items():  # warm-up 1: the same batch and weights on every path (and compiles)
        start = time.perf_counter()
        paths[name]["first_step_loss"] = rig.first_step(fixed_x, fixed_y, s)
        _sync(device)
        paths[name]["first_step_seconds"] = time.perf_counter() - start
    memory = PeakMemory(device)
    for r in range(max(s.warmup - 1, 0) + s.repeats):
        for name, rig in rigs.items():
            timed = r >= s.warmup - 1
            memory.start()
            seconds, loss = rig.window(s.window)
            peak = memory.stop()
            if timed:
                paths[name]["rates"].append(batch_size * s.window / seconds)
                paths[name]["mean_loss"] = loss
                if peak is not None:
                    paths[name]["peak_mb"] = max(peak, paths[name]["peak_mb"] or 0.0)
        log(f"  {case.label} b{batch_size} window {r + 1}: " + (", ".join(
            f"{n} {p['rates'][-1]:.1f} img/s" for n, p in paths.items()) if timed else "warm-up"))
    for name, rig in rigs.items():
        out = paths[name]
        out.update({"images_per_s": _summary(out.pop("rates")), "data_images_per_s": rig.data_rate(s.data_batches)})
        out["step_ms"] = 1000.0 * batch_size / out["images_per_s"]["median"]
        out["compute_bound"] = out["data_images_per_s"] > 2 * out["images_per_s"]["median"]
    record["paths"] = paths
    if probe is not None:
        record["fast_path"] = {"precision": probe.precision, "channels_last": probe.channels_last,
                               "source": probe.source, "probe_step_ms": probe.timings_ms}
    fast_like = [n for n in paths if n != "eager"]
    if len(fast_like) > 1:
        record["fastest_path"] = max(fast_like, key=lambda n: paths[n]["images_per_s"]["median"])
    if "eager" in paths and "fast" in paths:
        record["speedup"] = paths["fast"]["images_per_s"]["median"] / paths["eager"]["images_per_s"]["median"]
        a, b = paths["eager"]["first_step_loss"], paths["fast"]["first_step_loss"]
        record["first_step_loss_rel_diff"] = abs(a - b) / max(abs(a), 1e-12)
    return record


def _add_overheads(records: list[dict[str, Any]]) -> None:
    """``overhead[path]`` = step time of the case / step time of its baseline (same batch, same path)."""
    index = {(r["case"], r["batch_size"]): r for r in records}
    for r in records:
        base = index.get((r.get("baseline"), r["batch_size"]))
        if "paths" not in r or base is None or "paths" not in base:
            continue
        r["overhead"] = {p: base["paths"][p]["images_per_s"]["median"] / v["images_per_s"]["median"]
                         for p, v in r["paths"].items() if p in base["paths"]}


def run_bench(settings: BenchSettings, cases: list[BenchCase] | None = None,
              log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Measure every case at every batch size; the JSON-ready result (``settings``, ``environment``,
    ``paths``, ``results``: one record per case and batch size)."""
    cases = cases or SUITES["kd"]
    if settings.window < 1 or settings.repeats < 1 or settings.warmup < 1:
        raise ConfigError("bench needs warmup >= 1, repeats >= 1 and window >= 1.")
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _run_cases(settings, cases, log)
    finally:
        torch.set_num_threads(threads)


def _run_cases(settings: BenchSettings, cases: list[BenchCase], log: Callable[[str], None]) -> dict[str, Any]:
    device = resolve_device(settings.device)
    specs = resolve_paths(settings, device)
    env_before = environment(device)
    records = []
    for case in cases:
        for batch_size in settings.batch_sizes:
            log(f"measuring {case.label} (strategy {case.strategy}, losses {list(case.losses)}) at batch {batch_size}")
            records.append(measure_case(case, settings, batch_size, device, specs, log))
    _add_overheads(records)
    env = {**env_before, "load_average_after": environment(device).get("load_average")}
    return {"settings": asdict(settings), "environment": env,
            "paths": {k: asdict(v) for k, v in specs.items()}, "results": records}


# ----------------------------------------------------------------------------- output

def format_table(result: dict[str, Any]) -> str:
    """The result as a text table (one row per case, batch and path), then the ratios."""
    env = result["environment"]
    s = result["settings"]
    lines = [f"adakd bench: teacher {s['teacher']} -> student {s['student']}, {s['in_channels']}x{s['image_size']}x"
             f"{s['image_size']} random data, {s['num_classes']} classes; {env['device']} ({_cpu_text(env)}"
             f"{', ' + env['gpu'] if 'gpu' in env else ''}), {env['torch_threads']} threads, torch {env['torch']}, "
             f"load {env.get('load_average')} -> {env.get('load_average_after')}"]
    for name, p in result["paths"].items():
        lines.append(f"  {name}: {_auto(p['precision'])}, channels_last {_auto(p['channels_last'])}, compile "
                     f"{p['compile_mode'] if p['compile'] else 'off'}, data {p['data']}, "
                     f"{'host sync every step' if p['sync_every_step'] else 'no per-step host sync'}")
    if s.get("candidates") and "fast" in result["paths"]:
        lines.append("  fp32/bf16 NCHW/CL: the fast path under each candidate precision x memory format")
    width = max([18] + [len(r["case"]) for r in result["results"]])
    pw = max([6] + [len(n) for r in result["results"] for n in r.get("paths", {})])
    header = f"{'case':<{width}} {'batch':>5} {'path':<{pw}} {'images/s [q1, q3]':>24} {'step ms':>8} " \
             f"{'data img/s':>11} {'peak MB':>8} {'loss@1':>8}"
    lines += ["", header, "-" * len(header)]
    notes = []
    for r in result["results"]:
        if "skipped" in r:
            notes.append(f"{r['case']} (batch {r['batch_size']}): skipped: {r['skipped']}")
            continue
        for name, p in r["paths"].items():
            ips = p["images_per_s"]
            rate = f"{ips['median']:.1f} [{ips['q1']:.1f}, {ips['q3']:.1f}]"
            peak = "-" if p["peak_mb"] is None else f"{p['peak_mb']:.0f}"
            lines.append(f"{r['case']:<{width}} {r['batch_size']:>5} {name:<{pw}} {rate:>24} {p['step_ms']:>8.1f} "
                         f"{p['data_images_per_s']:>11,.0f} {peak:>8} {p['first_step_loss']:>8.4f}")
        if "fast_path" in r:
            fp = r["fast_path"]
            how = {"probe": "probe picked", "env": "$ADAKD_PRECISION set", "config": "set"}.get(fp["source"], fp["source"])
            figures = ", ".join(f"{k} {format_ms(v)} ms" for k, v in fp["probe_step_ms"].items())
            notes.append(f"{r['case']} (batch {r['batch_size']}): fast = {fp['precision']}"
                         f"{' + channels_last' if fp['channels_last'] else ''} ({how}{': ' + figures if figures else ''})"
                         + (f"; fastest here: {r['fastest_path']}" if "fastest_path" in r else ""))
        if "speedup" in r:
            notes.append(f"{r['case']} (batch {r['batch_size']}): fast/eager = {r['speedup']:.2f}x; first-step loss "
                         f"relative difference {r['first_step_loss_rel_diff']:.2e}")
        if "overhead" in r:
            notes.append(f"{r['case']} (batch {r['batch_size']}): step time vs {r['baseline']}: " + ", ".join(
                f"{p} {v:.2f}x" for p, v in r["overhead"].items()))
    return "\n".join(lines + [""] + notes)


def _cpu_text(env: dict[str, Any]) -> str:
    """"AMD EPYC; AVX512, avx512_bf16, no AMX" (older JSON without flags: the model alone)."""
    flags = env.get("cpu_flags")
    if not flags:
        return env["cpu"]
    have = [f for f in ("avx512_bf16", "avx512f", "avx2") if flags.get(f)]
    amx = "AMX bf16" if flags.get("amx_bf16") else "no AMX"
    limits = env.get("isa_limits") or {}
    capped = f"; instruction set capped: {', '.join(f'{k}={v}' for k, v in sorted(limits.items()))}" if limits else ""
    return f"{env['cpu']}; {env.get('cpu_capability')}, {', '.join(have + [amx])}{capped}"


def _auto(value: Any) -> str:
    return "auto (probed per case)" if value == "auto" else str(value)


def write_json(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    return atomic_write_json(path, result)


def progress_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- command line

def _yaml_arg(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: {text!r} is not valid YAML ({exc}); e.g. --losses \"{{kd: {{temperature: 4}}}}\".") from None


def parse_losses(text: str) -> dict[str, dict[str, Any]]:
    """``kd`` | ``[kd, at]`` | ``{dkd: {beta: 8}}`` -> {name: options}."""
    value = _yaml_arg(text, "--losses")
    if isinstance(value, str):
        return {value: {}}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {v: {} for v in value}
    if isinstance(value, dict) and all(isinstance(v, dict) or v is None for v in value.values()):
        return {k: dict(v or {}) for k, v in value.items()}
    raise ConfigError(f"--losses {text!r}: give a loss name, a list of names or a mapping name -> options.")


def settings_from_cli(args: Any) -> tuple[BenchSettings, list[BenchCase]]:
    """The settings and cases of ``adakd bench`` arguments (see cli.py)."""
    channels_last: bool | str = {"auto": "auto", "true": True, "false": False}[args.channels_last]
    kwargs = {}
    for key in ("teacher_kwargs", "student_kwargs"):
        kwargs[key] = _yaml_arg(getattr(args, key), "--" + key.replace("_", "-")) or {}
        if not isinstance(kwargs[key], dict):
            raise ConfigError(f"--{key.replace('_', '-')} must be a YAML mapping, e.g. \"{{widths: [16, 32, 64]}}\".")
    settings = BenchSettings(
        **kwargs, teacher=args.teacher, student=args.student, num_classes=args.num_classes, in_channels=args.in_channels,
        image_size=args.image_size, batch_sizes=list(args.batch_size), device=args.device, paths=tuple(args.paths),
        precision=args.precision, channels_last=channels_last, compile=args.compile, compile_mode=args.compile_mode,
        warmup=args.warmup, repeats=args.repeats, window=args.window, threads=args.threads, seed=args.seed,
        candidates=getattr(args, "candidates", True))
    if args.suite:
        return settings, SUITES[args.suite]
    options = _yaml_arg(args.strategy_options, "--strategy-options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"--strategy-options {args.strategy_options!r} must be a YAML mapping, e.g. \"{{routing: random}}\".")
    losses = parse_losses(args.losses)
    label = args.strategy if args.strategy != "standard" else "+".join(losses) or "ce"
    if args.strategy != "standard":
        label += f"({'+'.join(losses)})"
    if args.phase:
        label += f" {args.phase}"
    return settings, [BenchCase(label, losses=losses, strategy=args.strategy, options=options, phase=args.phase)]
