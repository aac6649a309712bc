"""Measuring: every path of a case at one batch size, timed window by window, interleaved; a whole bench."""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict
from typing import Any, Callable, Iterator

import torch

from ... import losses as _losses  # noqa: F401  (registers the distillers)
from ... import strategies as _strategies  # noqa: F401  (registers the strategies)
from ...errors import AdakdError, ConfigError
from ...registry import STRATEGIES
from ...runtime.device import resolve_device
from .data import random_dataset
from .environment import environment
from .memory import PeakMemory, sync
from .paths import case_paths, resolve_paths
from .rig import Rig
from .settings import SUITES, BenchCase, BenchSettings, PathSpec


def _summary(rates: list[float]) -> dict[str, float]:
    q = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else [rates[0]] * 3
    return {"median": statistics.median(rates), "q1": q[0], "q3": q[2], "min": min(rates), "max": max(rates)}


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
        sync(device)
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
    with torch_threads(settings.threads):
        return _run_cases(settings, cases, log)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` (None: left as they are) while inside."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


__all__ = ["measure_case", "run_bench", "torch_threads"]
