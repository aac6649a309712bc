"""Which fast path a run takes, chosen by measuring it: ``train.precision`` / ``train.channels_last`` = auto.

Why measure: bf16 autocast + channels_last is ~3.4x fp32 on a CPU with AMX bf16 tiles (Sapphire
Rapids), but on a CPU without AMX bf16 is emulated or converted and can be slower than fp32, and
which memory format wins depends on the models and the batch. No CPU flag predicts that, so a
short probe times a few real training steps of each candidate and takes the fastest:

* candidates: fp32 NCHW (the reference), fp32 channels_last, bf16 channels_last, bf16 NCHW; bf16
  only where the device runs bf16 autocast at all (its accuracy: benchmarks/fast_path_accuracy.py),
  and only the configured value of a setting that is not ``auto``;
* what is timed: a step built per candidate (the engine's probe, :mod:`adakd.engine.probe`, builds
  the strategy's own training step on copies of the run's models); candidates interleaved round by
  round, so a busy machine slows them alike; the median per candidate;
* the rule (:func:`choose`): the reference unless the fastest candidate beats it by more than
  :data:`MARGIN`, then the most exact candidate within that margin of the fastest -- the probe never
  picks a path slower than fp32 NCHW on that machine, nor bf16 for a gain within noise;
* the cost: two warm-up steps and 2-30 timed steps per candidate, timed rounds stopping after
  :data:`BUDGET_S` seconds (candidates far behind after the first round are dropped), one warm-up
  and one timed step each past :data:`MAX_S`: 1-2 s for Fashion-MNIST models, ~8 s for
  resnet32x4 -> resnet8x4 at batch 64 on 2 CPU cores; the result is cached
  as JSON under ``$ADAKD_CACHE/fast_path/`` (default ``~/.cache/adakd``) per device model, torch
  version, threads and what the caller's key names, so it runs once per setup;
* no side effects: every RNG is restored after timing.

Skipping it: ``ADAKD_PRECISION=fp32|bf16|fp16`` resolves ``precision: auto`` without a probe (then
``channels_last: auto`` = ``ADAKD_CHANNELS_LAST`` if set, else on with bf16/fp16; fp16 for a strategy that
cannot scale its steps, SAKD and ABL, is fp32, said in the log); ``ADAKD_CHANNELS_LAST=0|1``
alone fixes the memory format and the probe times the precisions only. Values written in the config
always win over the environment, and a config that names its precision never probes.

``torch.compile`` is not a candidate: its warm-up (minutes of code generation on a CPU) cannot be
measured in a probe of seconds; it stays opt-in (``train.compile``).
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ConfigError
from .atomic import atomic_write_json
from .cache_home import cache_home
from .device import bf16_supported, fp16_candidate
from .seeding import rng_state, set_rng_state

PRECISION_ENV = "ADAKD_PRECISION"
CHANNELS_LAST_ENV = "ADAKD_CHANNELS_LAST"
#: A candidate must beat the reference (the first: fp32 NCHW) by more than this to be chosen.
MARGIN = 0.05
#: Timed rounds stop after this many seconds (once MIN_ROUNDS are done); building and warm-up come before.
BUDGET_S = 3.0
WARMUP_STEPS, MIN_ROUNDS, MAX_ROUNDS = 2, 2, 30
#: Past this many seconds (slow steps: big models, big batches) the probe takes the fewest steps it can.
MAX_S = 60.0
#: A cached probe timed above this load per core (1-minute load average / cores) is timed again once the load
#: per core has fallen below half of what it was (the candidates' ranking under contention is not the quiet one).
BUSY_LOAD = 1.5
#: After the first timed round, candidates this much slower than the best stop being timed.
DROP_FACTOR = 1.5


@dataclass(frozen=True)
class Candidate:
    """One precision x memory format."""

    precision: str  # "fp32" | "bf16" | "fp16"
    channels_last: bool

    @property
    def label(self) -> str:
        return f"{self.precision} {'CL' if self.channels_last else 'NCHW'}"

    @property
    def description(self) -> str:
        return self.precision + (" + channels_last" if self.channels_last else "")


#: Times one training step per call of each candidate's step: {candidate: seconds per step}.
Timer = Callable[[list[Candidate]], dict[Candidate, float]]
#: Builds one candidate's training step (on private copies of the models); the step blocks until done.
StepBuilder = Callable[[Candidate], Callable[[], None]]


@dataclass
class FastPath:
    """The resolved precision and memory format, and how they were decided."""

    precision: str
    channels_last: bool
    #: "config" (explicit precision), "env" (ADAKD_PRECISION; "env-no-fp16": its fp16 refused by the strategy,
    #: fp32 instead), "only" (one candidate), "probe" (timed now),
    #: "cache" (timed before).
    source: str
    #: ms per step of every candidate timed, reference first (probe and cache only).
    timings_ms: dict[str, float] = field(default_factory=dict)
    cache_path: str | None = None

    def describe(self) -> str:
        """The log line, with the figures that chose the path."""
        what = Candidate(self.precision, self.channels_last).description
        if self.source == "config":
            return f"fast path: {what} (train.precision set in the config, no probe)"
        if self.source == "only":
            return f"fast path: {what} (the only candidate on this device, no probe)"
        if self.source == "env":
            return f"fast path: {what} (from ${PRECISION_ENV}, no probe)"
        if self.source == "env-no-fp16":
            return f"fast path: {what} (${PRECISION_ENV}=fp16, which this strategy does not support; no probe)"
        figures = ", ".join(f"{k} {format_ms(v)} ms" for k, v in self.timings_ms.items())
        where = "probe cached in" if self.source == "probe" else "cached probe"
        return f"fast path: {what} ({figures} per step; {where} {self.cache_path})"

    def record(self) -> dict[str, Any] | None:
        """What summary.json keeps of the probe (None when nothing was measured)."""
        if not self.timings_ms:
            return None
        return {"choice": Candidate(self.precision, self.channels_last).label, "source": self.source,
                "step_ms": dict(self.timings_ms), "cache": self.cache_path}


def format_ms(ms: float) -> str:
    """310 -> "310", 24.27 -> "24", 3.52 -> "3.5": enough digits to compare candidates."""
    return f"{ms:.0f}" if ms >= 10 else f"{ms:.2g}"


# ----------------------------------------------------------------------------- the rule

def candidates(precision: str, channels_last: bool | str, device: torch.device,
               fp16: bool = True) -> list[Candidate]:
    """The candidates a setting leaves open, the reference (fp32, NCHW where open) first, then bf16, then fp16
    (on CUDA only, :func:`~.device.fp16_candidate`; ``fp16=False`` for a strategy that cannot scale its steps)."""
    precisions = ["fp32", "bf16"] if precision == "auto" else [precision]
    if precision == "auto" and fp16 and fp16_candidate(device):
        precisions.append("fp16")
    if not bf16_supported(device):
        precisions = [p for p in precisions if p != "bf16"] or ["fp32"]
    layouts = [False, True] if channels_last == "auto" else [bool(channels_last)]
    return [Candidate(p, c) for p in precisions for c in layouts]


def choose(timings: dict[Candidate, float], margin: float = MARGIN) -> Candidate:
    """The reference (the first candidate) unless the fastest beats it by more than ``margin``; then the
    first candidate, in the given order of preference, within ``margin`` of the fastest.

    Candidates come in order of preference (:func:`candidates`: fp32 before bf16, NCHW before
    channels_last), so bf16 is taken only where it is clearly faster than exact fp32, not for noise."""
    reference = next(iter(timings))
    fastest = min(timings.values())
    if fastest >= (1.0 - margin) * timings[reference]:
        return reference
    return next(c for c, t in timings.items() if t <= fastest * (1.0 + margin) and t < (1.0 - margin) * timings[reference])


def env_override() -> tuple[str | None, bool | None]:
    """(``$ADAKD_PRECISION``, ``$ADAKD_CHANNELS_LAST``), None where unset; a bad value is a ConfigError."""
    precision = os.environ.get(PRECISION_ENV, "").strip().lower() or None
    if precision not in (None, "fp32", "bf16", "fp16"):
        raise ConfigError(f"${PRECISION_ENV}={precision!r}: use fp32, bf16 or fp16 (or unset it to let the probe "
                          "choose).")
    raw = os.environ.get(CHANNELS_LAST_ENV, "").strip().lower()
    layouts = {"": None, "0": False, "1": True, "false": False, "true": True}
    if raw not in layouts:
        raise ConfigError(f"${CHANNELS_LAST_ENV}={raw!r}: use 0 or 1 (or unset it to let the probe choose).")
    return precision, layouts[raw]


def resolve_fast_path(precision: str, channels_last: bool | str, device: torch.device, timer: Timer | None,
                      key: dict[str, Any] | None = None, margin: float = MARGIN, fp16: bool = True) -> FastPath:
    """Resolve the ``auto`` settings: config value > environment > cached probe > probe now (``timer``).

    ``key`` (JSON-able) names the setup the timings hold for; without it nothing is cached."""
    env_precision, env_layout = env_override()
    source = "config"
    if channels_last == "auto" and env_layout is not None:
        channels_last = env_layout
    if precision == "auto" and env_precision is not None:
        precision, source = env_precision, "env"
    if precision == "fp16" and source == "env" and not fp16:  # $ADAKD_PRECISION=fp16 for a strategy without it
        precision, source = "fp32", "env-no-fp16"
    if precision != "auto":  # named (config or env): no probe; the memory format follows the reduced-precision rule
        layout = precision in ("bf16", "fp16") if channels_last == "auto" else bool(channels_last)
        return FastPath(precision, layout, source)
    options = candidates(precision, channels_last, device, fp16)
    if len(options) == 1:
        return FastPath(options[0].precision, options[0].channels_last, "only")
    path = cache_file({**key, "candidates": [c.label for c in options]}) if key is not None else None
    timings, source = read_cache(path, options), "cache"
    if timings is None:
        if timer is None:
            raise ValueError("resolve_fast_path needs a timer to probe")
        timings, source = timer(options), "probe"
        timings = {c: timings[c] for c in options if c in timings}  # reference first
        if path is not None:
            write_cache(path, {**key, "candidates": [c.label for c in options]}, timings)
    pick = choose(timings, margin)
    return FastPath(pick.precision, pick.channels_last, source,
                    {c.label: round(1000.0 * s, 2) for c, s in timings.items()}, str(path) if path else None)


# ----------------------------------------------------------------------------- cache

def cache_dir() -> Path:
    """``$ADAKD_CACHE/fast_path`` (default ``~/.cache/adakd/fast_path``), beside the teacher cache."""
    return cache_home() / "fast_path"


def cache_file(key: dict[str, Any]) -> Path:
    text = json.dumps(key, sort_keys=True, default=str)
    return cache_dir() / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"


def read_cache(path: Path | None, options: list[Candidate]) -> dict[Candidate, float] | None:
    """The cached seconds per step of ``options``; None when absent, unreadable, not covering them, or
    timed while the machine was busy and it is calmer now (:func:`busy_then_calm_now`)."""
    if path is None:
        return None
    try:
        payload = json.loads(path.read_text())
        stored = payload["seconds_per_step"]
        timings = {c: float(stored[c.label]) for c in options}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None if busy_then_calm_now(payload.get("load")) else timings


def load_average() -> float | None:
    """The 1-minute load average per core (runnable threads per core), or None where the OS has none."""
    try:
        return os.getloadavg()[0] / max(os.cpu_count() or 1, 1)
    except (AttributeError, OSError):
        return None


def busy_then_calm_now(stored_load: Any, now: float | None = None) -> bool:
    """A probe timed with more than :data:`BUSY_LOAD` runnable threads per core (other jobs competing for the
    cores) misjudges the candidates; once the load per core is below half of that, it is timed again."""
    if not isinstance(stored_load, (int, float)) or stored_load <= BUSY_LOAD:
        return False
    now = load_average() if now is None else now
    return now is not None and now < stored_load / 2


def write_cache(path: Path, key: dict[str, Any], timings: dict[Candidate, float]) -> None:
    """Write atomically; a cache that cannot be written only costs a probe next time."""
    payload = {"key": json.loads(json.dumps(key, default=str)), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
               "load": load_average(), "seconds_per_step": {c.label: s for c, s in timings.items()}}
    try:
        atomic_write_json(path, payload)
    except OSError:
        pass


# ----------------------------------------------------------------------------- timing

def time_steps(build: StepBuilder, options: list[Candidate], budget_s: float = BUDGET_S,
               clock: Callable[[], float] = time.perf_counter, max_s: float = MAX_S) -> dict[Candidate, float]:
    """Median seconds per step of each candidate, its RNG use undone afterwards.

    Builds every candidate's step, runs :data:`WARMUP_STEPS` of each (the first allocates and picks
    kernels), then timed rounds of one step per candidate, interleaved so that background load
    hits all alike, until :data:`MAX_ROUNDS` or ``budget_s`` seconds of rounds (at least
    :data:`MIN_ROUNDS`). After round 1, candidates over :data:`DROP_FACTOR` x the best stop being
    timed (never the reference). Models whose step takes many seconds get one warm-up and one
    timed step each once ``max_s`` seconds have passed."""
    state = rng_state()
    try:
        start = clock()
        with warnings.catch_warnings():  # the run itself warns once about its setup, not once per candidate
            warnings.simplefilter("ignore")
            steps = {c: build(c) for c in options}
        for warmup in range(WARMUP_STEPS):
            if warmup and clock() - start > max_s:
                break
            for step in steps.values():
                step()
        samples: dict[Candidate, list[float]] = {c: [] for c in options}
        timed = clock()
        for round_ in range(MAX_ROUNDS):
            for c, step in steps.items():
                t0 = clock()
                step()
                samples[c].append(clock() - t0)
            if round_ == 0:
                best = min(s[0] for s in samples.values())
                steps = {c: s for i, (c, s) in enumerate(steps.items()) if i == 0 or samples[c][0] <= DROP_FACTOR * best}
            now = clock()
            if now - timed > budget_s and (round_ + 1 >= MIN_ROUNDS or now - start > max_s):
                break
        return {c: statistics.median(s) for c, s in samples.items()}
    finally:
        set_rng_state(state)
