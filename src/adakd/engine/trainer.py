"""The training loop: phases x epochs x steps, evaluation, checkpoints, metrics, resume.

    Trainer(cfg).run() -> summary dict

It builds data, student, teacher, distiller and strategy from the config, then
for every phase of the strategy (e.g. "pretrain", "search", "train") runs its
epochs: ``strategy``'s step on each batch, test accuracy at epoch ends, one line
of metrics.jsonl, an atomic ``last.pt`` (full state) and ``best.pt``. A killed run
continues from ``last.pt`` with ``resume``; SIGTERM/SIGINT save first, then stop.
"""
from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from ..config import RunConfig, dump_config, load_raw, validate
from ..data import build_data
from ..errors import AdakdError, CheckpointError, ConfigError
from ..losses.base import DistillContext
from ..models.contract import ContractModel
from ..strategies import Phase
from .callbacks import Callback, CallbackList, TensorBoardWriter
from .trackers import build_trackers
from .checkpoint import clean_stale_temporaries, load_checkpoint, load_weights, previous_path, save_checkpoint
from ..runtime.device import resolve_device
from ..runtime import distributed as ddp
from . import ranks
from .components import (build_components, build_phase_optimizer, build_student, check_names_and_options,
                         spec_of)
from .evaluate import evaluate
from .fast import compile_models
from .probe import resolve_run_fast_path
from .optim import StepSchedule
from .run_dir import RunDir, RunDirLock
from ..runtime.seeding import rng_state, seed_everything, set_rng_state
from .teacher import load_teacher, teacher_checkpoint_path
from . import teacher_cache


class RunInterrupted(AdakdError):
    """SIGTERM/SIGINT: the state was saved; ``--resume`` continues."""

    exit_code = 130


class NonFiniteLoss(AdakdError):
    """A NaN/inf loss, gradient, parameter or buffer; the last good checkpoint is kept."""


class _GradGuard:
    """Wraps a phase optimiser's ``step`` so that gradients are checked first (largest |g| finite).

    ``skip``: a step with a NaN/inf gradient does not run (one decision for every rank) and ``skipped``
    is set. Otherwise the step runs and ``bad`` keeps a device flag (no host sync per step); the trainer
    reads it with the loss, before any checkpoint is written."""

    def __init__(self, optimizer: torch.optim.Optimizer, skip: bool) -> None:
        self.skip = skip
        self.skipped = False
        self.bad: Tensor | None = None
        step = optimizer.step

        def guarded_step(*args: Any, **kwargs: Any) -> Any:
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                largest = torch.nn.utils.get_total_norm(grads, norm_type=float("inf"), foreach=True)
                if self.skip:
                    if not ddp.all_finite(largest):
                        optimizer.zero_grad(set_to_none=True)
                        self.skipped = True
                        return None
                else:
                    bad = ~torch.isfinite(largest)
                    self.bad = bad if self.bad is None else self.bad | bad
            return step(*args, **kwargs)

        optimizer.step = guarded_step  # type: ignore[method-assign]

    def take(self) -> tuple[bool, Tensor | None]:
        """(skipped, bad flag) since the last call; resets both."""
        out = (self.skipped, self.bad)
        self.skipped, self.bad = False, None
        return out


def _batchnorm_stats(modules: list[nn.Module]) -> list[Tensor]:
    """BatchNorm running statistics (mean, var, count) of ``modules``, each once."""
    seen: dict[int, Tensor] = {}
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                for t in (m.running_mean, m.running_var, m.num_batches_tracked):
                    if t is not None:
                        seen.setdefault(id(t), t)
    return list(seen.values())


@dataclass
class EpochAccumulator:
    """Sums of the step outputs, kept on the device (no host sync per step)."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    steps: int = 0
    samples: int = 0
    first_bad_step: Tensor | None = None

    def add(self, terms: dict[str, Tensor], batch_size: int, step: int, bad_grad: Tensor | None = None) -> None:
        for key, value in terms.items():
            value = value.detach()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        loss = terms["loss"]
        bad = ~torch.isfinite(loss)
        if bad_grad is not None:
            bad = bad | bad_grad.to(bad.device)
        marker = torch.where(bad, torch.full_like(loss, float(step)), torch.full_like(loss, -1.0))
        if self.first_bad_step is None:
            self.first_bad_step = marker
        else:
            self.first_bad_step = torch.where(self.first_bad_step >= 0, self.first_bad_step, marker)
        self.steps += 1
        self.samples += batch_size

    def bad_step(self) -> int | None:
        if self.first_bad_step is None:
            return None
        step = int(self.first_bad_step.item())
        return step if step >= 0 else None

    def means(self) -> dict[str, float]:
        out = {}
        for key, value in self.sums.items():
            v = value.item()
            out[key] = 100.0 * v / max(self.samples, 1) if key == "correct" else v / max(self.steps, 1)
        if "correct" in out:
            out["train_top1"] = out.pop("correct")
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "steps": self.steps, "samples": self.samples}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.steps, self.samples = state["steps"], state["samples"]


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


#: Keys that may differ on ``--resume`` without making it another run (where things live, how it runs or shows).
RESUME_IGNORED = ("resume", "progress", "name", "output_dir", "run_dir", "data.root", "device", "train.compile",
                  "train.compile_mode")
#: Keys ``--allow-changes`` may name: changing them continues the same run (recorded in ``history.jsonl``).
#: ``data.batch_size``: the per-process batch of a job resumed with another number of processes (the
#: loader's state still refuses a position that is not a whole number of the new global batches).
ALLOWED_CHANGES = ("train.epochs", "train.eval_every", "train.checkpoint_every_steps", "compare_scratch",
                   "data.batch_size")


#: Steps between two agreements of the ranks on a stop signal (one small host collective; 1 process: every step).
STOP_CHECK_EVERY = 16


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def config_changes(stored: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between a run's stored config and ``new`` (ignoring RESUME_IGNORED)."""
    a, b = _flatten(stored), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not any(k == i or k.startswith(i + ".") for i in RESUME_IGNORED)}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Trainer:
    """Runs one config end to end; see the module docstring."""

    def __init__(self, cfg: RunConfig, log: Callable[[str], None] | None = None, distributed: bool = True,
                 allow_changes: tuple[str, ...] = (), callbacks: Iterable[Callback] = ()) -> None:
        self.cfg = cfg
        self._callbacks = list(callbacks)  # plus the config's own (TensorBoard, trackers), joined in setup()
        self.callbacks = CallbackList()
        self.allow_changes = tuple(allow_changes)
        self._made: list[Path] | None = None  # what rank 0 created for this run (removed if setup fails)
        self._setup_done = False
        self._print = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._distributed = distributed  # False: a 1-process run even inside a torchrun job (teacher recipes)
        self._lock: RunDirLock | None = None  # rank 0's hold of the run directory while run() works

    # ------------------------------------------------------------------ setup
    def _log(self, msg: str) -> None:
        self._print(msg)
        if hasattr(self, "logger"):
            self.logger.info(msg)

    def _choose_run_dir(self) -> RunDir:
        base = self.cfg.resolved_run_dir()
        if self.cfg.resume or not base.exists() or not any(base.iterdir()):
            return RunDir(base)
        if self.cfg.run_dir:  # explicit directory: never write over another run
            raise AdakdError(f"run directory {base} already holds a run: pass --resume to continue it, "
                             "or choose another run_dir.")
        for i in range(1, 10_000):
            candidate = base.with_name(f"{base.name}-{i}")
            if not candidate.exists():
                return RunDir(candidate)
        raise AdakdError(f"too many runs named {base}; choose another name.")

    def build_student(self) -> ContractModel:
        return build_student(self.cfg.student, self.data.info)

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def setup(self) -> None:
        cfg = self.cfg
        self.dist = ddp.init_distributed(resolve_device(cfg.device)) if self._distributed else ddp.SINGLE
        if not self.dist.is_main:  # only rank 0 prints and writes
            self._print = lambda msg: None
        trackers = build_trackers(cfg, self.dist.is_main)  # checked before anything is written or trained
        # resume: auto (and torchrun restarts): rank 0 decides from the run directory, every rank follows
        self.cfg = cfg = ddp.run_on_main(lambda: ranks.resolve_auto_resume(cfg, self.allow_changes, self._print))
        path = ddp.run_on_main(lambda: self._create_run_dir(dump_config(cfg)))
        self.run_dir = RunDir(path) if self.dist.is_main else ranks.follower_run_dir(path)
        self.logger = self.run_dir.logger()
        seed_everything(cfg.seed, cfg.train.deterministic)
        self.device = ddp.rank_device(resolve_device(cfg.device), self.dist)
        self.data = build_data(cfg.data, self.device, seed=cfg.seed, rank=self.dist.rank,
                               world_size=self.dist.world_size, log=self._log)  # memory format set below, once chosen
        self.teacher: ContractModel | None = None
        self.teacher_top1: float | None = None
        if cfg.teacher is not None:
            ckpt = ddp.run_on_main(lambda: teacher_checkpoint_path(cfg.teacher, cfg, self._train_recipe, self._log))
            self.teacher = load_teacher(cfg.teacher, self.data.info, self.device, ckpt)
        torch.manual_seed(cfg.seed)  # the student's init does not depend on whether a teacher was evaluated
        self.student = self.build_student().to(self.device)
        # precision / channels_last "auto": timed on copies of these models (engine/probe.py), rank 0's choice for all
        self.fast_path = ddp.run_on_main(lambda: resolve_run_fast_path(
            cfg, self.device, self.student, self.teacher, self.data, self.steps_per_epoch))
        self.precision, self.channels_last = self.fast_path.precision, self.fast_path.channels_last
        self._log(self.fast_path.describe())
        for loader in (self.data.train, self.data.val, self.data.test):
            if loader is not None:
                loader.channels_last = self.channels_last
        if self.teacher is not None:
            self._prepare_model(self.teacher)
            self.teacher_top1 = evaluate(self.teacher, self.data.test, self.device, self.precision,
                                         dist=self.dist)["top1"]
            self._log(f"teacher {cfg.teacher.name}: test top-1 {self.teacher_top1:.2f}%")
        self._prepare_model(self.student)
        if cfg.train.sync_batchnorm and self.dist.active:
            ddp.convert_sync_batchnorm(self.student, self.device)
        parts = build_components(
            spec_of(cfg), self.student, self.teacher, device=self.device, precision=self.precision,
            channels_last=self.channels_last, num_classes=self.data.info.num_classes, num_train=self.data.num_train,
            steps_per_epoch=self.steps_per_epoch, val_loader=self.data.val, test_loader=self.data.test,
            run_dir=self.run_dir.path if self.dist.is_main else None, skip_nonfinite=cfg.train.on_nonfinite == "skip")
        self.distiller, self.strategy, self.phases = parts.distiller, parts.strategy, parts.phases
        self.teacher_feed = teacher_cache.attach(cfg, self.teacher, self.distiller, self.strategy, self.data,
                                                 self.device, self._log, ddp.run_on_main)  # issue 18
        for module in (self.student, self.distiller):  # one set of initial weights for every rank
            if module is not None:
                ddp.broadcast_module(module)
        if cfg.train.sync_batchnorm and self.dist.active:  # connectors, auxiliary heads: every trained module
            for phase in self.phases:
                for module in phase.modules:
                    ddp.convert_sync_batchnorm(module, self.device)
        if self.dist.active:  # steps that are one module call train through DistributedDataParallel (_phase_optimizer)
            wrapped = [p.name for p in self.phases if p.forward is not None]
            self._log(f"{self.dist.world_size} processes; gradients averaged by DistributedDataParallel in "
                      f"{wrapped or 'no phase'}, explicitly in {[p.name for p in self.phases if p.forward is None] or 'none'}")
        if cfg.train.compile:  # forward_features of student and teacher (what the strategies call)
            compile_models([self.student, self.teacher], self.device, cfg.train.compile_mode,
                           static_shapes=cfg.data.drop_last, cache_dir=self.run_dir.path / "inductor_cache")
        own = [TensorBoardWriter()] if cfg.train.tensorboard else []
        # trackers last: they record the epoch records as completed by every other callback
        self.callbacks = CallbackList([*own, *self._callbacks, *trackers], is_main=self.dist.is_main)
        self.callbacks.on_setup(self)

    def _create_run_dir(self, config_text: str) -> str:
        """Rank 0: choose the run directory, check a resumed run's config against its own (nothing is written
        before that passes), create it, clean a killed writer's temporaries, write the config; returns its path."""
        run_dir = self._choose_run_dir()
        changes = self._resume_changes(run_dir) if self.cfg.resume and run_dir.config_path.is_file() else None
        fresh = not run_dir.path.exists() or not any(run_dir.path.iterdir())
        missing = [p for p in (*reversed(run_dir.path.parents), run_dir.path) if not p.exists()]
        run_dir.create()
        self._made = (missing[0] if missing else run_dir.path, bool(missing)) if fresh else None
        self._lock = RunDirLock(run_dir.path).acquire()  # released when run() returns or raises
        for tmp in clean_stale_temporaries(run_dir.checkpoints):
            self._print(f"removed {tmp} (a checkpoint write cut short by a kill)")
        if changes is None:
            run_dir.write_config(config_text)
        elif changes:
            run_dir.write_config(config_text)
            with open(run_dir.path / "history.jsonl", "a") as f:
                f.write(json.dumps({"event": "resume", "time": round(time.time(), 3),
                                    "changes": {k: list(v) for k, v in changes.items()}}) + "\n")
        return str(run_dir.path)

    def _resume_changes(self, run_dir: RunDir) -> dict[str, tuple[Any, Any]]:
        """The allowed differences between this config and the resumed run's; refuses any other."""
        try:
            stored = load_raw(run_dir.config_path)
        except AdakdError as exc:
            raise AdakdError(f"cannot resume {run_dir.path}: its config.yaml is unreadable ({exc}).") from None
        try:  # through today's schema: a key added since the run was written compares as its default
            stored = validate(stored, str(run_dir.config_path)).model_dump(mode="json")
        except AdakdError:
            pass  # a key that no longer exists: compare the file as written (the difference is listed)
        changes = config_changes(stored, self.cfg.model_dump(mode="json"))
        refused = {k: v for k, v in changes.items() if k not in self.allow_changes}
        if refused:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in refused.items()))
            safe = [k for k in refused if k in ALLOWED_CHANGES]
            hint = (f" To continue with {', '.join(safe)} changed, pass --allow-changes {' '.join(safe)}."
                    if safe else "")
            raise ConfigError(
                f"--resume {run_dir.path}: this config differs from the run's own config.yaml ({listed}). A resumed "
                f"run must be the same run: resume with its config ({run_dir.config_path}), or start a new run "
                f"(another name/run_dir).{hint} Only {', '.join(ALLOWED_CHANGES)} may change.")
        bad = [k for k in self.allow_changes if k not in ALLOWED_CHANGES]
        if bad:
            raise ConfigError(f"--allow-changes {' '.join(bad)}: only {', '.join(ALLOWED_CHANGES)} may change "
                              "on resume.")
        return changes

    def _discard_run_dir(self) -> None:
        """Rank 0, after a failed setup: remove what this attempt created, so the next attempt starts clean."""
        if self._made is None:
            return
        top, created = self._made
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if hasattr(self, "logger"):
            for handler in list(self.logger.handlers):
                handler.close()
                self.logger.removeHandler(handler)
        if created:
            shutil.rmtree(top, ignore_errors=True)
        elif top.is_dir():  # a directory that existed empty: empty it again
            for child in top.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)

    def _train_recipe(self, cfg: RunConfig) -> object:
        """Train a teacher recipe in this process alone (rank 0 of a job; the other ranks wait)."""
        with ddp.local_only():
            return Trainer(cfg, self._print, distributed=False).run()

    def _save(self, path: Path, payload: dict[str, Any]) -> None:
        """save_checkpoint on rank 0 only; ``last.pt``'s previous version stays as ``last.prev.pt``."""
        if self.dist.is_main:
            save_checkpoint(path, payload, keep_previous=path == self.run_dir.last_checkpoint)
        self.callbacks.on_checkpoint(self, path)

    def _has_checkpoint(self) -> bool:
        last = self.run_dir.last_checkpoint
        return last.exists() or previous_path(last).exists()

    def _load_resume_state(self) -> dict[str, Any]:
        """``last.pt``, or ``last.prev.pt`` (said in the log) when ``last.pt`` is damaged or missing."""
        last = self.run_dir.last_checkpoint
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
            self._log(f"warning: {exc} -> falling back to the previous good checkpoint {prev}")
            return state

    # ------------------------------------------------------------------ state
    def _phase_optimizer(self, phase: Phase) -> tuple[torch.optim.Optimizer, StepSchedule]:
        ocfg = self.cfg.train.optimizer
        lr = ocfg.lr
        if ocfg.lr_reference_batch:
            lr *= self.cfg.data.batch_size * self.dist.world_size / ocfg.lr_reference_batch  # global batch
        optimizer = build_phase_optimizer(phase, ocfg, lr, self.device)
        if phase.forward is not None and self.dist.active:  # one DDP per phase, for its duration (see _run_phase)
            phase.forward.wrap(lambda module, unused: ddp.wrap_ddp(module, self.device, unused))
        if phase.forward is None or not phase.forward.wrapped:  # DDP averages in the backward; others here
            optimizer = ddp.sync_gradients(optimizer)
        sched_cfg = self.cfg.train.schedule
        if phase.schedule == "constant":
            sched_cfg = sched_cfg.model_copy(update={"name": "constant", "warmup_epochs": 0.0})
        schedule = StepSchedule(optimizer, sched_cfg, phase.epochs, self.steps_per_epoch)
        self.guard = _GradGuard(optimizer, skip=self.cfg.train.on_nonfinite == "skip")
        return optimizer, schedule

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.data.train)
        cap = self.cfg.train.max_steps_per_epoch
        return min(n, cap) if cap else n

    def _state(self, phase_index: int, epoch: int, step: int, optimizer: torch.optim.Optimizer,
               acc: EpochAccumulator | None, position: int) -> dict[str, Any]:
        return {
            "kind": "training-state",
            "phase_index": phase_index,
            "phase": self.phases[phase_index].name,
            "epoch": epoch,  # epochs completed in this phase
            "step": step,  # steps completed in this phase
            "position": position,  # steps completed within the current epoch (0 at epoch ends)
            "model": self.student.state_dict(),
            "distiller": None if self.distiller is None else self.distiller.state_dict(),
            "strategy": self.strategy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "loader": self.data.train.state_dict(),
            "rng": rng_state(),
            "accumulator": ranks.accumulator_state(acc),
            "best": self.best,
            "train_seconds": self.train_seconds,
            "train_samples": self.train_samples,
            "meta": self.meta(),
        }

    def meta(self) -> dict[str, Any]:
        """What is needed to rebuild the student from a checkpoint alone (``adakd eval ckpt.pt``)."""
        info = self.data.info
        return {"model": self.cfg.student.name, "kwargs": self.cfg.student.kwargs,
                "num_classes": info.num_classes, "in_channels": info.in_channels, "image_size": info.image_size,
                "mean": list(info.mean), "std": list(info.std),  # the input normalisation (adakd export)
                "data": self.cfg.data.model_dump(mode="json")}

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "training-state":
            raise CheckpointError(f"{self.run_dir.last_checkpoint} is not a training state; cannot resume from it.")
        load_weights(self.student, state["model"], "the resumed checkpoint's student")
        if self.distiller is not None and state["distiller"] is not None:
            self.distiller.load_state_dict(state["distiller"])
        self.strategy.load_state_dict(state["strategy"])
        self.best = state["best"]
        self.train_seconds = state["train_seconds"]
        self.train_samples = state["train_samples"]

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        """Train (or resume, or report a finished run); returns the summary. A failed setup leaves no
        run directory behind; a later error is also written to ``train.log``."""
        try:
            return self._run()
        except BaseException as exc:
            if not self._setup_done:
                if getattr(self, "dist", None) is None or self.dist.is_main:
                    self._discard_run_dir()
            elif hasattr(self, "logger"):
                what = str(exc) if isinstance(exc, AdakdError) else f"{type(exc).__name__}: {exc}"
                self.logger.info(f"error: {what}")
            raise
        finally:
            if self._lock is not None:
                self._lock.release()

    def _run(self) -> dict[str, Any]:
        check_names_and_options(self.cfg)  # a typo fails now, not after a teacher has trained
        self.setup()
        self._setup_done = True
        cfg = self.cfg
        self.best: dict[str, Any] = {"top1": -1.0, "epoch": 0}
        self.train_seconds = 0.0
        self.train_samples = 0
        self.skipped_steps = 0
        resume_state = None
        if cfg.resume and ddp.run_on_main(self._has_checkpoint):
            resume_state = ddp.run_on_main(self._load_resume_state)
            self._restore(resume_state)
            self._log(f"resuming {self.run_dir.path}: phase {resume_state['phase']}, epoch {resume_state['epoch']}, "
                      f"step {resume_state['position']} of the epoch")
            at_end = (resume_state["phase_index"] == len(self.phases) - 1
                      and resume_state["epoch"] >= self.phases[-1].epochs)
            previous = ddp.run_on_main(lambda: (self.run_dir.path / "checkpoints" / "student.pt").exists()
                                       and self.run_dir.read_summary())
            if at_end and previous:
                self._log("run already finished; nothing to do (its records are left as they are)")
                return previous
        else:
            if cfg.resume:
                self._log(f"resume: no checkpoint in {self.run_dir.path} yet; starting the run from the beginning")
            self._log(f"run directory {self.run_dir.path}")
            if self.dist.is_main and self.run_dir.metrics_path.exists():
                self.run_dir.metrics_path.unlink()
        self._log(f"device {self.device}, precision {self.precision}, channels_last {self.channels_last}; "
                  f"student {cfg.student.name} ({count_parameters(self.student):,} params), "
                  f"strategy {cfg.strategy.name}, losses {list(cfg.losses) or ['ce only']}")
        start_phase = resume_state["phase_index"] if resume_state else 0
        with _StopFlag() as stop:
            for index in range(start_phase, len(self.phases)):
                self._run_phase(index, resume_state if index == start_phase else None, stop)
        return self.finish(final=True)

    def _run_phase(self, index: int, state: dict[str, Any] | None, stop: _StopFlag) -> None:
        phase = self.phases[index]
        if state is None and phase.on_start is not None:
            phase.on_start()
        self.callbacks.on_phase_start(self, phase)
        optimizer, schedule = self._phase_optimizer(phase)
        start_epoch, step, position = 0, 0, 0
        acc_state = None
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            loader_state, step, position = ranks.resume_position(state, self.data.train, self.steps_per_epoch)
            start_epoch = state["epoch"]
            self.data.train.load_state_dict(loader_state)
            set_rng_state(state["rng"])
            acc_state = state["accumulator"]
            self.run_dir.truncate_metrics(self._global_epoch(index, start_epoch))
        for epoch in range(start_epoch, phase.epochs):
            acc = EpochAccumulator()
            if acc_state is not None and position > 0:
                if self.dist.is_main:  # the saved sums are the job's; the other ranks restart from zero
                    acc.load_state_dict(acc_state, self.device)
            else:
                self.data.train.set_epoch(self._global_epoch(index, epoch))
                position = 0
            acc_state = None
            step = self._run_epoch(index, phase, epoch, step, position, optimizer, schedule, acc, stop)
            position = 0
            self._end_epoch(index, phase, epoch, step, optimizer, schedule, acc)
        if phase.forward is not None:  # drop the phase's DDP: its gradient hooks on modules a later phase trains
            phase.forward.unwrap()

    def _global_epoch(self, phase_index: int, epoch: int) -> int:
        return sum(p.epochs for p in self.phases[:phase_index]) + epoch

    def _run_epoch(self, index: int, phase: Phase, epoch: int, step: int, position: int,
                   optimizer: torch.optim.Optimizer, schedule: StepSchedule, acc: EpochAccumulator,
                   stop: _StopFlag) -> int:
        cfg = self.cfg
        self.strategy.on_epoch_start(epoch)
        phase.model.train()
        spe = self.steps_per_epoch
        bar = self._progress(spe, initial=position, desc=f"{phase.name} {epoch + 1}/{phase.epochs}")
        t0 = time.perf_counter()
        samples0 = acc.samples
        skip = cfg.train.on_nonfinite == "skip"
        bn_stats = _batchnorm_stats([phase.model, *phase.modules]) if skip else []
        for i, batch in enumerate(self.data.train, start=position):
            if i >= spe:
                break
            lr = schedule.set_step(step)
            ctx = DistillContext(labels=batch.y, indices=batch.index, epoch=epoch, step=step,
                                 epochs_total=phase.epochs, progress=step / spe)
            saved_bn = [t.clone() for t in bn_stats]
            terms = phase.step(batch, ctx, optimizer)
            grad_skipped, bad_grad = self.guard.take()
            if skip and (grad_skipped or not ddp.all_finite(terms["loss"])):
                self.skipped_steps += 1  # the strategy did not step; keep the epoch's means clean
                for t, saved in zip(bn_stats, saved_bn):  # nor do the forward's BatchNorm statistics count
                    t.copy_(saved)
            else:
                acc.add(terms, batch.y.shape[0], step, bad_grad)
            self.callbacks.on_step_end(self, step, terms)
            step += 1
            if bar is not None:
                bar.update(1)
                if i % 25 == 0:
                    bar.set_postfix(loss=f"{terms['loss'].item():.3f}", lr=f"{lr:.4f}")
            if cfg.train.on_nonfinite == "error" and (i % 50 == 0 or i == spe - 1):
                self._check_finite(acc, terms, phase, epoch)
            every = cfg.train.checkpoint_every_steps
            checkpoint_now = bool(every and step % every == 0 and i + 1 < spe)
            stopping = False  # a signal is agreed over the ranks every STOP_CHECK_EVERY steps (no sync per step)
            if not self.dist.active or checkpoint_now or step % STOP_CHECK_EVERY == 0:
                stopping = ddp.agree_any(stop.signum is not None)
            if stopping or checkpoint_now:
                if cfg.train.on_nonfinite == "error":  # never save a state reached through a NaN/inf step
                    self._check_finite(acc, terms, phase, epoch)
                if not cfg.train.sync_batchnorm:  # one model in the checkpoint: BN statistics of the job
                    ranks.agree_batchnorm_statistics(self._trained_modules())
                self._check_state_finite(phase, epoch, step)
                self.train_seconds += time.perf_counter() - t0
                self.train_samples += acc.samples - samples0
                t0, samples0 = time.perf_counter(), acc.samples
                self._save(self.run_dir.last_checkpoint, self._state(index, epoch, step, optimizer, acc, i + 1))
                if stopping:
                    if bar is not None:
                        bar.close()
                    raise RunInterrupted(f"stopped by signal {stop.signum or 'on another rank'}; state saved in "
                                         f"{self.run_dir.last_checkpoint}. Continue with --resume.")
        if bar is not None:
            bar.close()
        self._sync()
        self.train_seconds += time.perf_counter() - t0
        self.train_samples += acc.samples - samples0
        self._check_finite(acc, None, phase, epoch)
        return step

    def _check_finite(self, acc: EpochAccumulator, terms: dict[str, Tensor] | None, phase: Phase, epoch: int) -> None:
        bad = ddp.agree_min(acc.bad_step())
        if bad is None:
            return
        which = ""
        if terms is not None:
            names = [k for k, v in terms.items() if k != "correct" and not bool(torch.isfinite(v))]
            which = f" (non-finite terms: {', '.join(names)})" if names else ""
        what = "loss" if which else "loss or its gradients"
        raise NonFiniteLoss(
            f"{what} became NaN/inf at step {bad} (phase {phase.name}, epoch {epoch + 1}){which}. "
            f"{self._last_good()} {self._nonfinite_fix()}")

    def _last_good(self) -> str:
        last = self.run_dir.last_checkpoint
        if self.dist.is_main and not last.exists():
            return "No checkpoint was written yet."
        return f"The last good checkpoint (verified finite) is {last}."

    def _nonfinite_fix(self) -> str:
        fp32 = "" if self.precision == "fp32" else ", use precision=fp32"
        return f"Lower the lr or a loss weight{fp32}, or set train.on_nonfinite=skip to skip such steps."

    def _trained_modules(self) -> list[nn.Module]:
        """Student, distiller and every phase's modules (heads, connectors): what a checkpoint holds."""
        return [self.student, *([self.distiller] if self.distiller is not None else []),
                *(m for p in self.phases for m in p.modules)]

    def _check_state_finite(self, phase: Phase, epoch: int, step: int) -> None:
        """Before a checkpoint or an evaluation is recorded: every parameter and buffer must be finite."""
        modules = self._trained_modules()
        tensors: dict[int, tuple[str, Tensor]] = {}
        for index, module in enumerate(modules):
            for name, t in (*module.named_parameters(), *module.named_buffers()):
                if t.is_floating_point() and t.numel():
                    tensors.setdefault(id(t), (name if index == 0 else f"{type(module).__name__}.{name}", t))
        values = [t.detach() for _, t in tensors.values()]
        largest = torch.nn.utils.get_total_norm(values, norm_type=float("inf"), foreach=True)
        if ddp.all_finite(largest):
            return
        names = [n for n, t in tensors.values() if not bool(torch.isfinite(t.detach()).all())]
        raise NonFiniteLoss(
            f"the model became NaN/inf by step {step} (phase {phase.name}, epoch {epoch + 1}): {len(names)} "
            f"parameters/buffers (e.g. {', '.join(names[:3])}); nothing was saved from this state. "
            f"{self._last_good()} {self._nonfinite_fix()}")

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _end_epoch(self, index: int, phase: Phase, epoch: int, step: int, optimizer: torch.optim.Optimizer,
                   schedule: StepSchedule, acc: EpochAccumulator) -> None:
        cfg = self.cfg
        record: dict[str, Any] = {"kind": "epoch", "phase": phase.name, "epoch": self._global_epoch(index, epoch) + 1,
                                  "phase_epoch": epoch + 1, "lr": schedule.set_step(max(step - 1, 0))}
        ranks.reduce_accumulator(acc)  # the job's epoch means (sums over the ranks)
        record.update(acc.means())
        last_epoch = epoch + 1 == phase.epochs
        if not cfg.train.sync_batchnorm:  # the evaluated model is the checkpointed one (issue 17, bug 1)
            ranks.agree_batchnorm_statistics(self._trained_modules())
        self._check_state_finite(phase, epoch, step)  # before anything of this epoch is recorded
        if phase.evaluate and ((epoch + 1) % cfg.train.eval_every == 0 or last_epoch):
            result = evaluate(phase.model, self.data.test, self.device, self.precision, dist=self.dist)
            record.update({"test_top1": result["top1"], "test_top5": result["top5"], "test_loss": result["loss"]})
            if phase is self.phases[-1] and result["top1"] > self.best["top1"]:
                self.best = {"top1": result["top1"], "top5": result["top5"], "epoch": record["epoch"]}
                self._save(self.run_dir.checkpoints / "best.pt",
                                {"kind": "student", "model": self.strategy.export_student().state_dict(),
                                 "meta": self.meta(), "epoch": record["epoch"], "top1": result["top1"]})
        record.update(self.strategy.epoch_metrics())
        if self.skipped_steps:
            record["skipped_steps"] = self.skipped_steps
        record["train_seconds"] = round(self.train_seconds, 3)
        record["seconds"] = round(time.time(), 3)
        self.callbacks.on_epoch_end(self, record)
        self.run_dir.append_metrics(record)
        self._save(self.run_dir.last_checkpoint, self._state(index, epoch + 1, step, optimizer, None, 0))
        msg = f"[{phase.name} {epoch + 1}/{phase.epochs}] loss {record.get('loss', float('nan')):.4f}"
        if "train_top1" in record:
            msg += f" train {record['train_top1']:.2f}%"
        if "test_top1" in record:
            msg += f" test {record['test_top1']:.2f}% (top-5 {record['test_top5']:.2f}%)"
        self._log(msg)

    def _progress(self, total: int, initial: int, desc: str):
        if not self.cfg.progress or not sys.stderr.isatty():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

    # ------------------------------------------------------------------ end
    def finish(self, final: bool) -> dict[str, Any]:
        last = None
        records = [r for r in self.run_dir.read_metrics() if r.get("kind") == "epoch" and "test_top1" in r
                   and r.get("phase") == self.phases[-1].name]
        if records:
            last = records[-1]
        student = self.strategy.export_student()
        if final:
            self._save(self.run_dir.checkpoints / "student.pt",
                            {"kind": "student", "model": student.state_dict(), "meta": self.meta()})
        summary = {
            "name": self.cfg.name,
            "run_dir": str(self.run_dir.path),
            "student": self.cfg.student.name,
            "teacher": self.cfg.teacher.name if self.cfg.teacher else None,
            "losses": list(self.cfg.losses),
            "strategy": self.cfg.strategy.name,
            "seed": self.cfg.seed,
            "epochs": self.cfg.train.epochs,
            "best_top1": self.best["top1"],
            "best_epoch": self.best["epoch"],
            "last_top1": last["test_top1"] if last else float("nan"),
            "last_top5": last["test_top5"] if last else float("nan"),
            "teacher_top1": self.teacher_top1,
            "train_seconds": round(self.train_seconds, 2),
            # the job's throughput: every rank trains on its own shard of each global batch
            "images_per_second": (round(self.train_samples * self.dist.world_size / self.train_seconds, 1)
                                  if self.train_seconds else 0.0),
            "world_size": self.dist.world_size,
            "student_parameters": count_parameters(student),
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "fast_path_probe": self.fast_path.record(),
        }
        if final:
            summary.update(self.strategy.end_of_training())
        else:  # a finished run resumed again: keep what the strategy recorded
            previous = self.run_dir.read_summary() or {}
            summary.update({k: v for k, v in previous.items() if k not in summary})
        self.callbacks.on_run_end(self, summary)
        self.run_dir.write_summary(summary)
        self._log(f"done: best top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch']}), "
                  f"last {summary['last_top1']:.2f}%, {summary['train_seconds']:.0f} s, "
                  f"{summary['images_per_second']:.0f} img/s -> {self.run_dir.path}")
        return summary


def train(cfg: RunConfig, log: Callable[[str], None] | None = None,
          allow_changes: tuple[str, ...] = (), callbacks: Iterable[Callback] = ()) -> dict[str, Any]:
    """Run ``cfg`` (and, with ``compare_scratch``, the same student without a teacher); return the summary.
    ``allow_changes``: config keys that may differ from a resumed run's own (see ALLOWED_CHANGES);
    ``callbacks``: :class:`~adakd.engine.callbacks.Callback` objects called at the trainer's events.

    Under torchrun this joins the job (engine/distributed.py) and leaves it at the end."""
    try:
        summary = Trainer(cfg, log, allow_changes=allow_changes, callbacks=callbacks).run()
        if cfg.compare_scratch and cfg.teacher is not None:
            run_dir = Path(summary["run_dir"]) / "scratch"
            scratch_cfg = cfg.model_copy(update={
                "teacher": None, "losses": {}, "strategy": cfg.strategy.model_copy(update={"name": "standard", "options": {}}),
                "ce_weight": 1.0, "compare_scratch": False, "run_dir": str(run_dir), "name": f"{cfg.name}-scratch",
                "resume": cfg.resume})
            scratch = Trainer(scratch_cfg, log, allow_changes=allow_changes).run()
            summary["scratch"] = {k: scratch[k] for k in ("best_top1", "last_top1", "train_seconds", "images_per_second")}
            if ddp.is_main():
                RunDir(summary["run_dir"]).write_summary(summary)
    except BaseException:
        ddp.shutdown_distributed(clean=False)
        raise
    ddp.shutdown_distributed()
    return summary

