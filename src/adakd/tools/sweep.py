"""Sweeps: a grid of configs x seeds, expanded into runs, run one after another or N at a time.

    adakd sweep studies/fmnist-methods/sweep.yaml [--parallel N] [--dry-run]

``--parallel N`` runs N at once with cores / N threads each: worth it on many cores or one GPU per
run; on 2 CPU cores two 1-thread ResNet-8 runs took 72 s per run against 54 s one at a time.

A sweep file::

    name: fmnist-methods
    base: ../../configs/fashion_mnist/student.yaml # the config every run starts from
    output_dir: runs                               # one run directory per run inside (git-ignored)
    seeds: [0, 1]
    overrides: ["train.epochs=15"]                 # dotted overrides applied to every run (last)
    grid:                                          # cartesian product of the axes, in this order
      method:                                      # axis -> {value label: config fragment}
        scratch: {}
        kd: {base: ../../configs/fashion_mnist/kd.yaml, compare_scratch: false}
      strategy:
        standard: {}
    exclude: [{method: kd, strategy: standard}]    # optional: label combinations to leave out

Each run is ``base`` <- the fragments, axis by axis (deep-merged; a fragment's own ``base:`` file is
merged first) <- ``overrides`` <- seed, name and run directory. Its name is
``<sweep>-<label>-...-s<seed>``. Runs go seed by seed (every cell of the grid with the first seed, then the
next), so a sweep stopped early has complete seeds. Relative paths in the sweep file (``base``, ``output_dir``, a
fragment's ``base``, ``teacher.recipe``/``checkpoint``, ``data.root``) resolve against the sweep file;
``{axis}`` in a fragment's ``base`` is replaced by that axis' label of the run (e.g.
``../configs/cifar100/{method}/{pair}.yaml``).

``teacher_cache: auto`` (default ``off``) sets ``teacher.cache=auto`` on every run with a teacher and, before
the runs start, builds each distinct cache once (``adakd cache build``, one per teacher x data x K): every
method and seed of a pair then reads the same teacher outputs instead of running the teacher (methods
that need its feature maps still run it live; see engine/teacher_cache.py).

Resumable: a finished run (``summary.json`` + ``checkpoints/student.pt``) is skipped, any other is
(re)started with ``resume=true`` so a killed run continues from its last checkpoint. Every run
is a subprocess (``python -m adakd train``) logging to ``RUN_DIR/sweep.log``; its labels go to
``RUN_DIR/sweep.json`` for ``adakd report``.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import PUBLISHED_TEACHER, RunConfig, apply_overrides, deep_merge, load_raw, validate
from ..errors import ConfigError
from ..runtime.atomic import atomic_write_text

SWEEP_KEYS = ("name", "base", "output_dir", "seeds", "overrides", "grid", "exclude", "teacher_cache")
RUN_META = "sweep.json"
RUN_CONFIG = "sweep_config.yaml"
RUN_LOG = "sweep.log"
_LABEL = re.compile(r"^[A-Za-z0-9_.+]+$")


@dataclass
class SweepRun:
    """One run of a sweep: its labels (axis -> value), seed, directory and merged raw config."""

    name: str
    labels: dict[str, str]
    seed: int
    run_dir: Path
    config: dict[str, Any]

    def state(self) -> str:
        """"done" (finished), "resume" (started, has a checkpoint) or "new"."""
        if (self.run_dir / "summary.json").is_file() and (self.run_dir / "checkpoints" / "student.pt").is_file():
            return "done"
        if (self.run_dir / "checkpoints" / "last.pt").is_file():
            return "resume"
        return "new"

    def validated(self) -> RunConfig:
        return validate(self.config, f"sweep run {self.name}")


@dataclass
class Sweep:
    name: str
    path: Path
    output_dir: Path
    runs: list[SweepRun] = field(default_factory=list)
    teacher_cache: str = "off"


# ------------------------------------------------------------------ expansion

def _resolve(path: str, root: Path) -> str:
    expanded = os.path.expanduser(os.path.expandvars(path))
    return expanded if os.path.isabs(expanded) else str((root / expanded).resolve())


def _fragment_paths(fragment: dict[str, Any], root: Path) -> dict[str, Any]:
    """Relative teacher.recipe / teacher.checkpoint / data.root of a fragment, made absolute against ``root``."""
    fragment = copy.deepcopy(fragment)
    teacher = fragment.get("teacher")
    if isinstance(teacher, dict):
        for key in ("recipe", "checkpoint"):
            if isinstance(teacher.get(key), str) and teacher[key] != PUBLISHED_TEACHER:
                teacher[key] = _resolve(teacher[key], root)
    data = fragment.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str):
        data["root"] = _resolve(data["root"], root)
    return fragment


def _merge_fragment(raw: dict[str, Any], fragment: dict[str, Any], root: Path, labels: dict[str, str],
                    where: str) -> dict[str, Any]:
    fragment = _fragment_paths(fragment, root)
    base = fragment.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{where}: `base` must be a config file path.")
        try:
            base = base.format(**labels)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"{where}: base {base!r} names an unknown axis ({exc}); the axes are "
                              f"{', '.join(labels)}.") from None
        raw = deep_merge(raw, load_raw(_resolve(base, root)))
    return deep_merge(raw, fragment)


def _check_spec(spec: Any, path: Path) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping with keys {', '.join(SWEEP_KEYS)}.")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {unknown}; valid keys: {', '.join(SWEEP_KEYS)}.")
    if not isinstance(spec.get("name"), str) or not _LABEL.match(spec["name"].replace("-", "_")):
        raise ConfigError(f"{path}: `name` is required (letters, digits, - _ . +), e.g. name: fmnist-methods.")
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{path}: `seeds` must be a non-empty list of integers, e.g. seeds: [0, 1].")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: `seeds` repeats a seed: {seeds}.")
    overrides = spec.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{path}: `overrides` must be a list of key=value strings, e.g. [\"train.epochs=15\"].")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: `grid` maps each axis to {{label: config fragment}}.")
    for axis, values in grid.items():
        if not isinstance(values, dict) or not values:
            raise ConfigError(f"{path}: grid axis {axis!r} must map value labels to config fragments "
                              "(use {} for 'no change').")
        for label, fragment in values.items():
            if not _LABEL.match(str(label).replace("-", "_")):
                raise ConfigError(f"{path}: grid label {label!r} of axis {axis!r} may use letters, digits, - _ . + only.")
            if fragment is not None and not isinstance(fragment, dict):
                raise ConfigError(f"{path}: grid.{axis}.{label} must be a mapping (a config fragment), "
                                  f"got {type(fragment).__name__}.")
    if spec.get("teacher_cache", "off") not in ("off", "auto"):
        raise ConfigError(f"{path}: `teacher_cache` is off or auto (a cache per teacher x data x K, built once).")
    exclude = spec.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(e, dict) for e in exclude):
        raise ConfigError(f"{path}: `exclude` is a list of {{axis: label or [labels]}} mappings.")
    for entry in exclude:
        for axis in entry:
            if axis not in grid:
                raise ConfigError(f"{path}: exclude names axis {axis!r}, which is not in the grid ({', '.join(grid)}).")
    return spec


def _excluded(labels: dict[str, str], exclude: list[dict[str, Any]]) -> bool:
    def matches(value: Any, label: str) -> bool:
        return label in [str(v) for v in value] if isinstance(value, list) else str(value) == label

    return any(all(matches(v, labels[k]) for k, v in entry.items()) for entry in exclude)


def load_sweep(path: str | os.PathLike[str]) -> Sweep:
    """Read a sweep file and expand it into its runs (each config merged and validated)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}. A study's sweep file is studies/<name>/sweep.yaml.")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    spec = _check_spec(spec, path)
    root = path.parent
    name = spec["name"]
    output_dir = Path(_resolve(spec.get("output_dir", f"runs/{name}"), root))
    base_raw = load_raw(_resolve(spec["base"], root)) if spec.get("base") else {}
    grid: dict[str, dict[str, Any]] = spec.get("grid") or {}
    axes = list(grid)
    sweep = Sweep(name=name, path=path, output_dir=output_dir, teacher_cache=spec.get("teacher_cache", "off"))
    for combo in itertools.product(*(list(grid[a]) for a in axes)):
        labels = {a: str(v) for a, v in zip(axes, combo)}
        if _excluded(labels, spec.get("exclude", [])):
            continue
        raw = copy.deepcopy(base_raw)
        for axis, label in labels.items():
            raw = _merge_fragment(raw, grid[axis][label] or {}, root, labels, f"{path}: grid.{axis}.{label}")
        raw = apply_overrides(raw, spec.get("overrides", []))
        if sweep.teacher_cache == "auto" and isinstance(raw.get("teacher"), dict):
            raw["teacher"].setdefault("cache", "auto")
        for seed in spec.get("seeds", [0]):
            run_name = "-".join([name, *labels.values(), f"s{seed}"])
            config = dict(copy.deepcopy(raw), name=run_name, seed=seed, run_dir=str(output_dir / run_name))
            run = SweepRun(run_name, labels, seed, output_dir / run_name, config)
            run.validated()
            sweep.runs.append(run)
    if not sweep.runs:
        raise ConfigError(f"{path}: the sweep expands to no run (check `grid` and `exclude`).")
    seeds = list(spec.get("seeds", [0]))
    sweep.runs.sort(key=lambda r: seeds.index(r.seed))  # seed-major: a stopped sweep has whole seeds done
    return sweep


# ------------------------------------------------------------------ running

@dataclass
class RunOutcome:
    name: str
    status: str  # "done" (finished now), "skipped" (finished before), "failed", "interrupted"
    returncode: int = 0
    best_top1: float | None = None
    last_top1: float | None = None
    seconds: float = 0.0


def prepare(run: SweepRun, sweep_name: str) -> Path:
    """Write the run's config (with resume=true) and its sweep labels into its directory; return the config."""
    config_path = atomic_write_text(run.run_dir / RUN_CONFIG, yaml.safe_dump(dict(run.config, resume=True),
                                                                             sort_keys=False))
    meta = {"sweep": sweep_name, "run": run.name, "labels": run.labels, "seed": run.seed}
    atomic_write_text(run.run_dir / RUN_META, json.dumps(meta, indent=2) + "\n")
    return config_path


def uses_cache(cfg: RunConfig) -> bool:
    """Whether a run reads a teacher-output cache: a teacher with ``cache`` on, losses that read only the
    teacher's logits / pooled embedding, and a strategy that reads the teacher through them."""
    from .. import losses, strategies  # noqa: F401  (register the distillers and strategies)
    from ..registry import DISTILLERS, STRATEGIES

    if cfg.teacher is None or cfg.teacher.cache == "off" or not cfg.losses:
        return False
    if not getattr(STRATEGIES.get(cfg.strategy.name).factory, "uses_teacher_cache", True):
        return False
    return all(getattr(DISTILLERS.get(name).factory, "teacher_outputs", None) is not None for name in cfg.losses)


def cache_groups(runs: list[SweepRun]) -> list[SweepRun]:
    """One run per distinct teacher cache among ``runs`` (same teacher, data, epochs and cache settings)."""
    firsts: dict[str, SweepRun] = {}
    for run in runs:
        cfg = run.validated()
        if not uses_cache(cfg):
            continue
        assert cfg.teacher is not None
        key = json.dumps([cfg.teacher.model_dump(mode="json"), cfg.data.model_dump(mode="json"),
                          cfg.teacher.cache_views or cfg.train.epochs], sort_keys=True)
        firsts.setdefault(key, run)
    return list(firsts.values())


def build_caches(sweep: Sweep, runs: list[SweepRun], log: Callable[[str], None],
                 command: list[str] | None = None) -> None:
    """Build the teacher cache of each group of ``runs`` once, before they start (resumable, like the runs)."""
    command = command or [sys.executable, "-m", "adakd", "cache", "build"]
    for run in cache_groups(runs):
        config = prepare(run, sweep.name)
        t0 = time.perf_counter()
        with open(run.run_dir / "cache_build.log", "a") as out:
            rc = subprocess.call([*command, str(config)], stdout=out, stderr=subprocess.STDOUT, env=_child_env(1))
        if rc != 0:
            raise ConfigError(f"building the teacher cache for {run.name} failed (exit {rc}): "
                              f"{_last_error(run.run_dir / 'cache_build.log')}")
        log(f"teacher cache for {run.name} and the runs of its pair: ready ({time.perf_counter() - t0:.1f} s)")


def _child_env(parallel: int) -> dict[str, str]:
    env = dict(os.environ)
    if parallel > 1 and "OMP_NUM_THREADS" not in env:  # N runs share the cores instead of fighting for them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


def _read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _last_error(log_path: Path) -> str:
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("adakd: error:")]
    return (errors or lines or [""])[-1][:300]


class _Progress:
    """One line per run start and finish: ``[ 3/12] done  NAME  best 85.21%  last 85.02%  312 s``."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.log, self.width = total, log, len(str(total))

    def line(self, index: int, verb: str, name: str, extra: str = "") -> None:
        self.log(f"[{index + 1:>{self.width}}/{self.total}] {verb:<8} {name}{('  ' + extra) if extra else ''}")


def run_sweep(sweep: Sweep, parallel: int = 1, log: Callable[[str], None] | None = None,
              command: list[str] | None = None) -> list[RunOutcome]:
    """Run every unfinished run of ``sweep``, ``parallel`` at a time; return one outcome per run.

    ``command`` is the trainer invocation before the config path (default ``python -m adakd train``).
    Ctrl-C / SIGINT / SIGTERM stop the running children (they save a checkpoint) and end the sweep; running it
    again resumes them.
    """
    log = log or (lambda msg: print(msg, flush=True))
    command = command or [sys.executable, "-m", "adakd", "train"]
    parallel = max(1, int(parallel))
    progress = _Progress(len(sweep.runs), log)
    outcomes: dict[int, RunOutcome] = {}
    pending: list[int] = []
    for i, run in enumerate(sweep.runs):
        if run.state() == "done":
            s = _read_summary(run.run_dir)
            outcomes[i] = RunOutcome(run.name, "skipped", 0, _float(s.get("best_top1")), _float(s.get("last_top1")),
                                     _float(s.get("train_seconds")) or 0.0)
            progress.line(i, "skip", run.name, "finished earlier")
        else:
            pending.append(i)
    if sweep.teacher_cache != "off" and pending:
        build_caches(sweep, [sweep.runs[i] for i in pending], log)
    running: dict[int, tuple[subprocess.Popen, float, Any]] = {}
    env = _child_env(parallel)

    def start(i: int) -> None:
        run = sweep.runs[i]
        state = run.state()
        config_path = prepare(run, sweep.name)
        handle = open(run.run_dir / RUN_LOG, "a")
        proc = subprocess.Popen([*command, str(config_path)], stdout=handle, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        running[i] = (proc, time.perf_counter(), handle)
        progress.line(i, "resume" if state == "resume" else "start", run.name)

    def finish(i: int, rc: int) -> None:
        proc, t0, handle = running.pop(i)
        handle.close()
        run = sweep.runs[i]
        seconds = time.perf_counter() - t0
        if rc == 0:
            s = _read_summary(run.run_dir)
            best, last = _float(s.get("best_top1")), _float(s.get("last_top1"))
            outcomes[i] = RunOutcome(run.name, "done", 0, best, last, seconds)
            progress.line(i, "done", run.name, f"best {best or float('nan'):.2f}%  last {last or float('nan'):.2f}%  "
                                               f"{seconds:.0f} s")
        else:
            outcomes[i] = RunOutcome(run.name, "failed", rc, seconds=seconds)
            progress.line(i, "FAILED", run.name, f"exit {rc}: {_last_error(run.run_dir / RUN_LOG)} "
                                                 f"(log: {run.run_dir / RUN_LOG})")

    # SIGINT too: a sweep started in the background (`adakd sweep ... &`) inherits SIGINT ignored
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for sig in previous:
            signal.signal(sig, signal.default_int_handler)
    except ValueError:  # not the main thread
        previous = {}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                start(pending.pop(0))
            for i, (proc, _, _) in list(running.items()):
                rc = proc.poll()
                if rc is not None:
                    finish(i, rc)
            if running:
                time.sleep(0.2)
    except KeyboardInterrupt:
        for i, (proc, _, _) in running.items():
            proc.send_signal(signal.SIGTERM)  # the trainer saves its state, then exits
        for i, (proc, t0, handle) in list(running.items()):
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            handle.close()
            outcomes[i] = RunOutcome(sweep.runs[i].name, "interrupted", proc.returncode or 130)
            progress.line(i, "stopped", sweep.runs[i].name, "state saved; run the sweep again to resume")
        running.clear()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return [outcomes[i] for i in sorted(outcomes)]


def describe(sweep: Sweep) -> list[str]:
    """The dry-run listing: one line per run with its state and directory."""
    lines = [f"sweep {sweep.name}: {len(sweep.runs)} runs -> {sweep.output_dir}"]
    width = max(len(r.name) for r in sweep.runs)
    for run in sweep.runs:
        cfg = run.validated()
        what = f"{cfg.teacher.name if cfg.teacher else '-'} -> {cfg.student.name}, losses {list(cfg.losses) or ['ce']}, " \
               f"strategy {cfg.strategy.name}, {cfg.train.epochs} epochs"
        lines.append(f"  {run.name.ljust(width)}  {run.state():<6}  {what}")
    return lines
