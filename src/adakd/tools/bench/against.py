"""``adakd bench --against reference``: the reference code base's training step beside ours, per method.

    adakd bench --against reference --reference-path ~/src/mdistiller --methods kd dkd at --repeats 5

Per method and batch size, in one process, on the same random CIFAR-shaped data (uint8 images
augmented and normalised on the device for both): the reference's step (:mod:`.reference`: its
distiller, its config for the method, its summed losses, backward, SGD, a host sync per step) and ours
(our config ``<configs>/<method>/<teacher-short>_<student-short>.yaml``: its losses and CE weight, on
the fast path the probe picks, or as ``--precision`` / ``--channels-last`` say). Timed windows are
interleaved (reference, ours, reference, ours, ...) after ``warmup`` untimed pairs; images/s = batch x
steps / seconds of a window; reported: the median over windows with the quartiles, and the ratio
ours / reference. The result records the CPU (model, class: amx_bf16 / avx512_bf16 / avx2) and
torch's threads: a ratio means nothing without the machine it came from.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ...config import load_raw
from ...data import DeviceLoader
from ...errors import AdakdError, ConfigError
from ...runtime.device import resolve_device
from .data import endless, random_dataset
from .environment import environment
from .measure import _summary, torch_threads
from .output import _cpu_text
from .paths import case_paths, resolve_paths
from .reference import REFERENCE_METHODS, ReferenceStep, load_reference
from .rig import Rig
from .settings import BenchCase, BenchSettings, mean_std

#: The short model names of our configs' file names (``configs/cifar100/kd/res32x4_res8x4.yaml``).
SHORT_NAMES = {"resnet32x4": "res32x4", "resnet8x4": "res8x4", "resnet56": "res56", "resnet20": "res20",
               "resnet110": "res110", "resnet32": "res32"}


def our_case(method: str, teacher: str, student: str, configs: Path) -> BenchCase:
    """Our step for ``method``: the losses and CE weight of our config for the pair."""
    pair = f"{SHORT_NAMES.get(teacher, teacher)}_{SHORT_NAMES.get(student, student)}"
    path = configs / method / f"{pair}.yaml"
    if not path.is_file():
        raise ConfigError(f"no config of ours for {method} on {teacher} -> {student}: {path} is missing; "
                          f"pass --configs DIR holding <method>/{pair}.yaml (default configs/cifar100).")
    raw = load_raw(path)  # its losses and CE weight only: the teacher's checkpoint is not needed to time a step
    losses = raw.get("losses") or {}
    if not isinstance(losses, dict):
        raise ConfigError(f"{path}: losses must be a mapping name -> options for the bench.")
    return BenchCase(method, losses={k: dict(v or {}) for k, v in losses.items()},
                     ce_weight=float(raw.get("ce_weight", 1.0)))


def _reference_batches(data: tuple[torch.Tensor, torch.Tensor], s: BenchSettings, batch_size: int,
                       device: torch.device) -> Any:
    mean, std = mean_std(s)
    loader = DeviceLoader(data[0], data[1], mean=mean, std=std, batch_size=batch_size, device=device, shuffle=True,
                          augment=True, crop_padding=s.crop_padding, flip=True, drop_last=True, seed=s.seed)
    return endless(loader)


def measure_method(method: str, code: Any, s: BenchSettings, batch_size: int, device: torch.device,
                   configs: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The reference's step and ours for one method at one batch size, interleaved."""
    record: dict[str, Any] = {"method": method, "batch_size": batch_size}
    data = random_dataset(max(s.dataset_size, 2 * batch_size), (s.in_channels, s.image_size, s.image_size),
                          s.num_classes, s.seed)
    try:
        case = our_case(method, s.teacher, s.student, configs)
        specs, probe = case_paths(case, s, batch_size, device, resolve_paths(s, device), data)
        ours = Rig(case, s, specs["fast"], batch_size, device, data)
    except AdakdError as exc:
        record["skipped"] = f"ours: {type(exc).__name__}: {exc}"
        return record
    try:
        ref = ReferenceStep(code, method, s.teacher, s.student, s.num_classes,
                            _reference_batches(data, s, batch_size, device), len(data[1]), device, s.seed)
    except Exception as exc:  # the user's checkout: any version, any failure is reported, not raised
        record["skipped"] = f"reference: {type(exc).__name__}: {exc}"
        return record
    record["reference_type"] = ref.kind
    record["ours"] = {"losses": case.losses, "ce_weight": case.ce_weight, "precision": specs["fast"].precision,
                      "channels_last": specs["fast"].channels_last,
                      "source": probe.source if probe is not None else "config"}
    rates: dict[str, list[float]] = {"reference": [], "ours": []}
    losses: dict[str, float] = {}
    for r in range(s.warmup + s.repeats):
        timed = r >= s.warmup
        for name, side in (("reference", ref), ("ours", ours)):
            seconds, losses[name] = side.window(s.window)
            if timed:
                rates[name].append(batch_size * s.window / seconds)
        log(f"  {method} b{batch_size} window {r + 1}: " + (", ".join(
            f"{n} {v[-1]:.1f} img/s" for n, v in rates.items()) if timed else "warm-up"))
    for name in rates:
        record[name] = {**record.get(name, {}), "images_per_s": _summary(rates[name]), "mean_loss": losses[name]}
    record["ratio"] = record["ours"]["images_per_s"]["median"] / record["reference"]["images_per_s"]["median"]
    return record


def run_against_reference(settings: BenchSettings, methods: list[str], reference_path: str | None,
                          configs: str | Path = "configs/cifar100",
                          log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Every method at every batch size; the JSON-ready result (``settings``, ``environment``,
    ``reference``, ``results``: one record per method and batch size)."""
    unknown = [m for m in methods if m not in REFERENCE_METHODS]
    if unknown:
        raise ConfigError(f"--methods {' '.join(unknown)}: no reference counterpart; use {', '.join(REFERENCE_METHODS)}.")
    if settings.window < 1 or settings.repeats < 1 or settings.warmup < 0:
        raise ConfigError("bench --against reference needs repeats >= 1, window >= 1 and warmup >= 0.")
    code = load_reference(reference_path)
    s = replace(settings, paths=("fast",), candidates=False)
    with torch_threads(s.threads):
        device = resolve_device(s.device)
        env_before = environment(device)
        records = []
        for method in methods:
            for batch_size in s.batch_sizes:
                log(f"measuring {method} against the reference at batch {batch_size}")
                records.append(measure_method(method, code, s, batch_size, device, Path(configs), log))
        env = {**env_before, "load_average_after": environment(device).get("load_average")}
    return {"against": "reference", "settings": asdict(s), "environment": env,
            "reference": {"code": "mdistiller", "path": str(code.root)}, "results": records}


def format_against_table(result: dict[str, Any]) -> str:
    """The result as a text table: per method and batch, reference and our images/s and the ratio."""
    env, s = result["environment"], result["settings"]
    lines = [f"adakd bench --against reference ({result['reference']['code']} at {result['reference']['path']}): "
             f"{s['teacher']} -> {s['student']}, random {s['in_channels']}x{s['image_size']}x{s['image_size']} data, "
             f"{s['repeats']} interleaved windows of {s['window']} step(s) after {s['warmup']} warm-up",
             f"machine: {env['device']} ({_cpu_text(env)}); CPU class {env['cpu_class']}; {env['torch_threads']} "
             f"torch threads; torch {env['torch']}; load {env.get('load_average')} -> {env.get('load_average_after')}"]
    header = f"{'method':<9} {'batch':>5} {'reference img/s [q1, q3]':>26} {'adakd img/s [q1, q3]':>26} " \
             f"{'ratio':>7}  adakd path"
    lines += ["", header, "-" * len(header)]
    notes = []
    for r in result["results"]:
        if "skipped" in r:
            notes.append(f"{r['method']} (batch {r['batch_size']}): skipped: {r['skipped']}")
            continue
        cells = []
        for side in ("reference", "ours"):
            ips = r[side]["images_per_s"]
            cells.append(f"{ips['median']:.1f} [{ips['q1']:.1f}, {ips['q3']:.1f}]")
        o = r["ours"]
        path = f"{o['precision']}{' + channels_last' if o['channels_last'] else ''} ({o['source']})"
        lines.append(f"{r['method']:<9} {r['batch_size']:>5} {cells[0]:>26} {cells[1]:>26} {r['ratio']:>6.2f}x  {path}")
    return "\n".join(lines + ([""] + notes if notes else []))


__all__ = ["our_case", "measure_method", "run_against_reference", "format_against_table", "SHORT_NAMES"]
