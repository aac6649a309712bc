"""The search file of ``adakd tune``: what to search, how, and for how long.

    study: dkd-beta-t             # optional; default the file's name without .yaml
    trials: 20                    # finished trials (complete or pruned) the study stops at
    metric: val_top1              # the held-out validation split's top-1 (or val_loss); never the test split
    direction: maximize           # default: maximize for val_top1, minimize for val_loss
    sampler: tpe                  # tpe (default) | random | grid (every key a list of choices: each combination once)
    seed: 0                       # the sampler's seed
    pruner: median                # median (default) | asha | none: on the per-epoch validation metric
    heartbeat: {interval: 10, grace: 60}   # seconds; a trial silent for `grace` is failed and retried
    space:                        # dotted config keys -> a range or a list of choices
      losses.dkd.beta: {float: [1, 16], log: true}
      losses.dkd.temperature: {float: [1, 8]}
      train.optimizer.lr: {choices: [0.05, 0.1, 0.2]}
      strategy.options.meta_every: {int: [1, 8], step: 1}

A trial's values become dotted overrides of the config (``losses.dkd.beta=3.7``), exactly as on the
``adakd train`` command line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ...errors import ConfigError

METRICS = {"val_top1": "maximize", "val_loss": "minimize"}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "asha", "none")
_FILE_KEYS = {"study", "trials", "metric", "direction", "sampler", "seed", "pruner", "heartbeat", "space"}


@dataclass(frozen=True)
class Param:
    """One searched key: ``kind`` float/int with ``low..high`` (``log``, ``step``), or ``choices``."""

    key: str
    kind: Literal["float", "int", "choices"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial proposes for this key."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.key, list(self.choices))

    def corners(self) -> list[Any]:
        """Values that must all give a valid config (checked before any trial runs)."""
        if self.kind == "choices":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


@dataclass(frozen=True)
class SearchSpace:
    study: str
    params: tuple[Param, ...]
    trials: int = 20
    metric: str = "val_top1"
    direction: str = "maximize"
    sampler: str = "tpe"
    seed: int | None = 0
    pruner: str = "median"
    heartbeat_interval: int = 10
    heartbeat_grace: int = 60
    source: str = field(default="", compare=False)


def override(key: str, value: Any) -> str:
    """``key=value`` as the config loader reads it back (YAML scalars: 3.7, true, resnet8, [1, 2])."""
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def _param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: space.{key} must be a mapping like {{float: [1, 16], log: true}}, "
                          f"{{int: [1, 8]}} or {{choices: [a, b]}}, got {spec!r}.")
    kinds = [k for k in ("float", "int", "choices") if k in spec]
    unknown = set(spec) - {"float", "int", "choices", "log", "step"}
    if len(kinds) != 1 or unknown:
        raise ConfigError(f"{where}: space.{key} needs exactly one of float / int / choices (plus log, step), "
                          f"got keys {sorted(spec)}.")
    kind = kinds[0]
    if kind == "choices":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: space.{key}.choices must be a non-empty list, got {choices!r}.")
        return Param(key, "choices", choices=tuple(choices))
    bounds = spec[kind]
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
        raise ConfigError(f"{where}: space.{key}.{kind} must be [low, high] (two numbers), got {bounds!r}.")
    low, high = float(bounds[0]), float(bounds[1])
    log, step = bool(spec.get("log", False)), spec.get("step")
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"{where}: space.{key}: low {bounds[0]} must be below high {bounds[1]}.")
    if log and low <= 0:
        raise ConfigError(f"{where}: space.{key}: a log range needs low > 0, got {bounds[0]}.")
    if step is not None and (log or not isinstance(step, (int, float)) or step <= 0):
        raise ConfigError(f"{where}: space.{key}: step must be a positive number and cannot go with log.")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{where}: space.{key}.int bounds must be whole numbers, got {bounds!r}.")
    return Param(key, kind, low, high, log, float(step) if step is not None else None)


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a search file (one :class:`ConfigError` naming the key on any mistake)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file not found: {path}.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}.") from None
    where = str(path)
    if not isinstance(data, dict) or not isinstance(data.get("space"), dict) or not data["space"]:
        raise ConfigError(f"{where}: needs a `space:` mapping of dotted config keys to ranges, e.g. "
                          "space: {losses.dkd.beta: {float: [1, 16], log: true}}.")
    unknown = set(data) - _FILE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_FILE_KEYS)}.")
    metric = data.get("metric", "val_top1")
    if metric not in METRICS:
        raise ConfigError(f"{where}: metric {metric!r} is not one of {sorted(METRICS)} (validation split only).")
    direction = data.get("direction", METRICS[metric])
    sampler, pruner = data.get("sampler", "tpe"), str(data.get("pruner", "median")).lower()
    for name, value, allowed in (("direction", direction, ("maximize", "minimize")), ("sampler", sampler, SAMPLERS),
                                 ("pruner", pruner, PRUNERS)):
        if value not in allowed:
            raise ConfigError(f"{where}: {name} {value!r} is not one of {list(allowed)}.")
    trials = data.get("trials", 20)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConfigError(f"{where}: trials must be a whole number >= 1, got {trials!r}.")
    beat = data.get("heartbeat") or {}
    if not isinstance(beat, dict) or set(beat) - {"interval", "grace"}:
        raise ConfigError(f"{where}: heartbeat must be {{interval: SECONDS, grace: SECONDS}}, got {beat!r}.")
    interval, grace = int(beat.get("interval", 10)), int(beat.get("grace", 60))
    if interval < 1 or grace <= interval:
        raise ConfigError(f"{where}: heartbeat needs interval >= 1 and grace > interval (got {interval}, {grace}).")
    params = tuple(_param(str(k), v, where) for k, v in data["space"].items())
    if sampler == "grid" and any(p.kind != "choices" for p in params):
        raise ConfigError(f"{where}: sampler grid needs every key of space as {{choices: [...]}}; "
                          f"{', '.join(p.key for p in params if p.kind != 'choices')} are ranges.")
    return SearchSpace(study=str(data.get("study") or path.stem), params=params, trials=trials, metric=metric,
                       direction=direction, sampler=sampler, seed=data.get("seed", 0), pruner=pruner,
                       heartbeat_interval=interval, heartbeat_grace=grace, source=str(path.resolve()))
