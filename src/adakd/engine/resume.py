"""The resume policy: which run directory a run writes, when it continues a run, what may change.

* ``resume: false``: a new run; a name whose directory holds a run goes to ``name-1``, ``name-2``, ...
  (an explicit ``run_dir`` is never written over: an error says to pass ``--resume`` or choose another);
* ``resume: true`` (``--resume``): continue ``run_dir`` from ``last.pt`` (``last.prev.pt`` if that is
  damaged); its ``config.yaml`` must equal this config up to :data:`RESUME_IGNORED` and the keys of
  ``--allow-changes`` (only :data:`ALLOWED_CHANGES`; each change recorded in ``history.jsonl``). The
  strategy's and the distillers' options compare as resolved (``resolved.yaml``, defaults included): a
  default changed in the code since the run started is a listed difference, which ``--allow-changes``
  may name (a run directory written before ``resolved.yaml`` existed compares them with today's defaults);
* ``resume: auto``, and every restart of torchrun's agent (``TORCHELASTIC_RESTART_COUNT`` > 0): continue the
  newest matching run that holds a checkpoint, else start a new one (:func:`resolve_auto_resume`).

Rank 0 decides (the trainer broadcasts the result); it holds the directory (:class:`RunDirClaim`) while the
run works, and a setup that fails removes what it created, so the next attempt starts clean.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from logging import Logger
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import RunConfig, flatten, load_raw, validate
from ..errors import AdakdError, CheckpointError, ConfigError
from .checkpoint import atomic_write_text, clean_stale_temporaries, load_checkpoint, previous_path
from .components import resolved_options
from .run_dir import RunDir, RunDirLock

#: Keys that may differ on ``--resume`` without making it another run (where things live, how it runs or shows).
RESUME_IGNORED = ("resume", "progress", "name", "output_dir", "run_dir", "data.root", "device", "train.compile",
                  "train.compile_mode", "train.trackers", "train.tracker_artifacts")  # where a run is also logged
#: Keys ``--allow-changes`` may name: changing them continues the same run (recorded in ``history.jsonl``).
#: ``data.batch_size``: the per-process batch of a job resumed with another number of processes (the
#: loader's state still refuses a position that is not a whole number of the new global batches).
ALLOWED_CHANGES = ("train.epochs", "train.eval_every", "train.checkpoint_every_steps", "compare_scratch",
                   "data.batch_size", "teacher.weights")
#: ``teacher.weights`` is no config key: the teacher's weights themselves (:func:`check_teacher`).


def config_changes(stored: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between a run's stored config and ``new`` (ignoring RESUME_IGNORED)."""
    a, b = flatten(stored), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not any(k == i or k.startswith(i + ".") for i in RESUME_IGNORED)}


def choose_run_dir(cfg: RunConfig) -> RunDir:
    """The configured directory, or (a new run where it holds one) its first free numbered sibling."""
    base = cfg.resolved_run_dir()
    if cfg.resume or not base.exists() or not any(base.iterdir()):
        return RunDir(base)
    if cfg.run_dir:  # explicit directory: never write over another run
        raise AdakdError(f"run directory {base} already holds a run: pass --resume to continue it, "
                         "or choose another run_dir.")
    for i in range(1, 10_000):
        candidate = base.with_name(f"{base.name}-{i}")
        if not candidate.exists():
            return RunDir(candidate)
    raise AdakdError(f"too many runs named {base}; choose another name.")


def _with_resolved(config: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a dumped config) with its strategy and losses replaced by their resolved options."""
    return {**config, "strategy": resolved["strategy"], "losses": resolved["losses"]}


def comparable(cfg: RunConfig) -> dict[str, Any]:
    """``cfg`` as a resume compares it: dumped, the strategy's and distillers' options resolved."""
    return _with_resolved(cfg.model_dump(mode="json"), resolved_options(cfg))


def stored_comparable(run_dir: RunDir) -> dict[str, Any]:
    """The run's own ``config.yaml`` as a resume compares it: through today's schema (a key added since the
    run was written compares as its default), its options as ``resolved.yaml`` recorded them at the start.
    A run directory without ``resolved.yaml`` (written before it existed) resolves them with today's
    defaults: it resumes as it did then, blind to a changed default. Raises AdakdError if unreadable."""
    stored = load_raw(run_dir.config_path)
    try:
        cfg = validate(stored, str(run_dir.config_path))
    except AdakdError:
        return stored  # a key that no longer exists: compare the file as written (the difference is listed)
    stored = cfg.model_dump(mode="json")
    if run_dir.resolved_path.is_file():
        resolved = yaml.safe_load(run_dir.resolved_path.read_text())
        if isinstance(resolved, dict) and {"strategy", "losses"} <= set(resolved):
            return _with_resolved(stored, resolved)
    try:
        return _with_resolved(stored, resolved_options(cfg))
    except AdakdError:
        return stored


def _option_keys(config: dict[str, Any]) -> set[str]:
    """The dotted keys of the strategy's and distillers' options of a comparable config."""
    strategy = config.get("strategy") if isinstance(config.get("strategy"), dict) else {}
    losses = config.get("losses") if isinstance(config.get("losses"), dict) else {}
    keys = {f"strategy.options.{k}" for k in (strategy.get("options") or {})}
    return keys | {f"losses.{n}.{k}" for n, opts in losses.items() if isinstance(opts, dict) for k in opts}


def changed_defaults(cfg: RunConfig, stored: dict[str, Any], new: dict[str, Any],
                     changes: dict[str, Any]) -> list[str]:
    """The keys of ``changes`` that are options of the same strategy / distiller on both sides which ``cfg``
    leaves to their defaults: what a changed default of the code made differ."""
    if "strategy.name" in changes:
        return []
    given = {f"strategy.options.{k}" for k in cfg.strategy.options}
    given |= {f"losses.{n}.{k}" for n, opts in cfg.losses.items() for k in (opts or {})}
    both = _option_keys(stored) & _option_keys(new)
    return [k for k in changes if k in both and k not in given]


def resume_changes(cfg: RunConfig, run_dir: RunDir, allow_changes: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    """The allowed differences between ``cfg`` and the resumed run's own config; refuses any other.
    Allowed: :data:`ALLOWED_CHANGES`, and an option whose default changed since the run started."""
    try:
        stored = stored_comparable(run_dir)
    except AdakdError as exc:
        raise AdakdError(f"cannot resume {run_dir.path}: its config.yaml is unreadable ({exc}).") from None
    new = comparable(cfg)
    changes = config_changes(stored, new)
    defaults = changed_defaults(cfg, stored, new, changes)
    allowed = (*ALLOWED_CHANGES, *defaults)
    refused = {k: v for k, v in changes.items() if k not in allow_changes}
    if refused:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in refused.items()))
        safe = [k for k in refused if k in allowed]
        hint = (f" To continue with {', '.join(safe)} changed, pass --allow-changes {' '.join(safe)}."
                if safe else "")
        moved = [k for k in refused if k in defaults]
        if moved:
            hint += (" The default of " + ", ".join(moved) + " changed since the run started: to keep the run's "
                     "value, set it in the config (" + ", ".join(f"{k}={stored_value!r}" for k, (stored_value, _)
                                                            in refused.items() if k in moved) + ").")
        raise ConfigError(
            f"--resume {run_dir.path}: this config differs from the run's own config.yaml ({listed}). A resumed "
            f"run must be the same run: resume with its config ({run_dir.config_path}), or start a new run "
            f"(another name/run_dir).{hint} Only {', '.join(ALLOWED_CHANGES)} (and options whose default changed) "
            "may change.")
    bad = [k for k in allow_changes if k not in allowed]
    if bad:
        raise ConfigError(f"--allow-changes {' '.join(bad)}: only {', '.join(ALLOWED_CHANGES)} (and options whose "
                          "default changed since the run started) may change on resume.")
    return changes


@dataclass
class RunDirClaim:
    """Rank 0's hold of its run directory: the lock, and what this attempt created (``made``: the topmost
    folder it made and whether it made it, or None where it continues a directory that held files)."""

    path: Path
    made: tuple[Path, bool] | None
    lock: RunDirLock | None = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def discard(self, logger: Logger | None = None) -> None:
        """After a failed setup: remove what this attempt created (the run log closed first)."""
        if self.made is None:
            return
        top, created = self.made
        self.release()
        for handler in list(logger.handlers if logger is not None else ()):
            handler.close()
            logger.removeHandler(handler)
        if created:
            shutil.rmtree(top, ignore_errors=True)
        elif top.is_dir():  # a directory that existed empty: empty it again
            for child in top.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def claim_run_dir(cfg: RunConfig, allow_changes: tuple[str, ...], config_text: str,
                  log: Callable[[str], None]) -> RunDirClaim:
    """Rank 0: choose the run directory, check a resumed run's config against its own (nothing is written
    before that passes), create and lock it, clean a killed writer's temporaries, write the config."""
    run_dir = choose_run_dir(cfg)
    changes = resume_changes(cfg, run_dir, allow_changes) if cfg.resume and run_dir.config_path.is_file() else None
    fresh = not run_dir.path.exists() or not any(run_dir.path.iterdir())
    missing = [p for p in (*reversed(run_dir.path.parents), run_dir.path) if not p.exists()]
    run_dir.create()
    claim = RunDirClaim(run_dir.path, (missing[0] if missing else run_dir.path, bool(missing)) if fresh else None)
    try:
        claim.lock = RunDirLock(run_dir.path).acquire()  # released when the run returns or raises
        for tmp in clean_stale_temporaries(run_dir.checkpoints):
            log(f"removed {tmp} (a checkpoint write cut short by a kill)")
        if changes is None or changes:
            run_dir.write_config(config_text)
        if changes is None or changes or not run_dir.resolved_path.is_file():  # an older run: from now on
            atomic_write_text(run_dir.resolved_path, yaml.safe_dump(resolved_options(cfg), sort_keys=False))
        if changes:
            with open(run_dir.path / "history.jsonl", "a") as f:
                f.write(json.dumps({"event": "resume", "time": round(time.time(), 3),
                                    "changes": {k: list(v) for k, v in changes.items()}}) + "\n")
    except BaseException:
        claim.discard()
        raise
    return claim


def check_teacher(state: dict[str, Any], teacher_sha256: str | None, run_dir: Path,
                  allow_changes: tuple[str, ...], log: Callable[[str], None]) -> None:
    """A resumed run distils from the teacher it started with. The config names the teacher's file (or
    recipe), not its contents: a file replaced in place, ``checkpoint: published`` that fell back to the
    recipe at the start and finds the published file now, or a recipe teacher trained again would change the
    run without a word. So every training state carries the teacher's weights digest (``teacher_sha256``),
    and a resume with other weights is refused unless ``--allow-changes teacher.weights``. A state written
    before the digest existed resumes as before."""
    stored = state.get("teacher_sha256")
    if stored is None or stored == teacher_sha256:
        return
    change = f"the teacher's weights (sha256 {str(stored)[:16]}... -> {str(teacher_sha256)[:16]}...)"
    if "teacher.weights" in allow_changes:
        log(f"resume: {change} changed; continuing with the new teacher (--allow-changes teacher.weights)")
        return
    raise ConfigError(
        f"--resume {run_dir}: {change} differ from those the run started with, though the config names the same "
        "teacher: its file was replaced, or `checkpoint: published` fell back to the recipe then and finds the "
        "published file now, or its recipe was trained again. Resume with the teacher the run started with, "
        "start a new run, or pass --allow-changes teacher.weights to continue with this one.")


def has_checkpoint(run_dir: RunDir) -> bool:
    last = run_dir.last_checkpoint
    return last.exists() or previous_path(last).exists()


def load_resume_state(run_dir: RunDir, log: Callable[[str], None]) -> dict[str, Any]:
    """``last.pt``, or ``last.prev.pt`` (said in the log) when ``last.pt`` is damaged or missing."""
    last = run_dir.last_checkpoint
    prev = previous_path(last)
    try:
        if not last.exists() and prev.exists():
            raise CheckpointError(f"{last} is missing (killed between two checkpoint writes)")
        return load_checkpoint(last)
    except CheckpointError as exc:
        if not prev.exists():
            raise
        try:
            state = load_checkpoint(prev)
        except CheckpointError:
            raise exc from None
        log(f"warning: {exc} -> falling back to the previous good checkpoint {prev}")
        return state


def elastic_restart() -> int:
    """How many times torchrun's agent has restarted this job's workers (``--max-restarts``; 0 otherwise)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def resolve_auto_resume(cfg: RunConfig, allow_changes: tuple[str, ...], log: Callable[[str], None]) -> RunConfig:
    """Rank 0: ``cfg`` with ``resume`` decided (True/False) where it is ``"auto"``, or where torchrun restarted
    the workers (``TORCHELASTIC_RESTART_COUNT`` > 0: the agent relaunches them with the same arguments, so a
    restart continues its own run without ``--resume`` added by hand).

    Auto resumes the newest of ``run_dir`` and its numbered siblings (``name-1``, ``name-2``, ...: where a run
    whose directory was taken went) that holds a checkpoint and a ``config.yaml`` equal to ``cfg`` up to the
    keys the strict resume ignores and ``allow_changes``; it starts a new run when there is none."""
    restarted = elastic_restart() > 0
    if cfg.resume is True or (cfg.resume is False and not restarted):
        return cfg
    base = cfg.resolved_run_dir()
    candidates = [base] if cfg.run_dir else [base, *(base.with_name(f"{base.name}-{i}") for i in range(1, 10_000))]
    found = None
    for path in candidates:
        if not path.exists():
            if path != base:
                break
            continue
        rd = RunDir(path)
        if not has_checkpoint(rd) or not rd.config_path.is_file():
            continue
        try:
            changes = config_changes(stored_comparable(rd), comparable(cfg))
        except AdakdError:
            continue
        if all(k in allow_changes for k in changes):
            found = path
    why = f"torchrun restart {elastic_restart()}" if restarted else "resume: auto"
    if found is None:
        log(f"{why}: no checkpoint of this config under {base}; starting a new run")
        return cfg.model_copy(update={"resume": False})
    log(f"{why}: continuing {found} from its last checkpoint")
    return cfg.model_copy(update={"resume": True, "run_dir": str(found)})
