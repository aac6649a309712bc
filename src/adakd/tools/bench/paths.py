"""The paths of a bench: eager and fast, the fast one resolved per case and batch by the fast-path
probe (:mod:`adakd.engine.probe`), and with ``candidates`` every other precision x memory format."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from ...runtime.timing import Candidate, FastPath, StepBuilder, candidates, resolve_fast_path, time_steps
from ...errors import ConfigError
from .rig import Rig
from .settings import PATHS, BenchCase, BenchSettings, PathSpec


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


__all__ = ["resolve_paths", "rig_step_builder", "case_paths"]
