"""The training loop: phases x epochs x steps, evaluation, checkpoints, metrics.

    Trainer(cfg).run() -> summary dict

:meth:`Trainer.setup` builds the run's parts (:class:`RunParts`: data, student, teacher, distiller,
strategy and its phases, the run directory) from the config. Then for every phase of the strategy
(e.g. "pretrain", "search", "train") the trainer runs its epochs: the strategy's step on each batch,
test accuracy at epoch ends, one line of metrics.jsonl, an atomic ``last.pt`` (full state) and
``best.pt``. Beside it: which run directory and when a run continues (:mod:`.resume`), NaN/inf
(:mod:`.nonfinite`), the epoch's sums (:mod:`.accumulator`), the ranks of a torchrun job (:mod:`.ranks`).
A killed run continues from ``last.pt`` with ``resume``; SIGTERM/SIGINT save first, then stop.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from logging import Logger
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..config import RunConfig, dump_config
from ..errors import AdakdError, CheckpointError
from ..losses.base import DistillContext
from ..runtime import distributed as ddp
from ..runtime.device import resolve_device
from ..runtime import phase_clock
from ..runtime.phase_clock import PhaseClock, startup_seconds
from ..runtime.seeding import rng_state, set_rng_state
from ..runtime.signals import StopFlag
from ..strategies import Phase
from . import nonfinite, ranks, resume, trackers
from .accumulator import EpochAccumulator, accumulator_state, describe_epoch, reduce_accumulator
from .callbacks import Callback, CallbackList, TensorBoardWriter
from .checkpoint import load_weights, save_checkpoint
from .components import build_phase_optimizer, check_names_and_options
from .evaluate import evaluate
from .nonfinite import GradGuard, NonFiniteLoss
from .optim import StepSchedule
from .parts import RunParts, build_parts
from .run_dir import RunDir

#: Steps between two agreements of the ranks on a stop signal (one small host collective; 1 process: every step).
STOP_CHECK_EVERY = 16


class RunInterrupted(AdakdError):
    """SIGTERM/SIGINT: the state was saved; ``--resume`` continues."""

    exit_code = 130


@dataclass
class RunTotals:
    """What the run adds up over its epochs (kept in ``last.pt``, but for ``skipped_steps``)."""

    best: dict[str, Any] = field(default_factory=lambda: {"top1": -1.0, "epoch": 0})
    train_seconds: float = 0.0
    train_samples: int = 0
    skipped_steps: int = 0  # steps skipped for a NaN/inf (train.on_nonfinite=skip; fp16: the loss scale's overflows)


@dataclass
class PhaseOptimizer:
    """A phase's optimiser, its learning-rate schedule and the non-finite guard on its steps."""

    optimizer: torch.optim.Optimizer
    schedule: StepSchedule
    guard: GradGuard


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _part(name: str) -> property:
    """``trainer.<name>``: that part of the run (:class:`RunParts`) once :meth:`Trainer.setup` has built it."""

    def get(self: "Trainer") -> Any:
        if self.parts is None:
            raise AdakdError(f"Trainer.{name} exists once Trainer.setup() has run (run() calls it).")
        return getattr(self.parts, name)

    return property(get, doc=f"The run's {name} (RunParts.{name}).")


class Trainer:
    """Runs one config end to end; see the module docstring. ``callbacks`` get this object: its
    ``cfg`` and, once set up, the run's parts (``run_dir``, ``student``, ``data``, ... of :class:`RunParts`)."""

    def __init__(self, cfg: RunConfig, log: Callable[[str], None] | None = None, distributed: bool = True,
                 allow_changes: tuple[str, ...] = (), callbacks: Iterable[Callback] = ()) -> None:
        self.cfg = cfg  # setup() decides resume: auto here
        self.allow_changes = tuple(allow_changes)
        self.parts: RunParts | None = None  # setup()
        self.totals = RunTotals()
        self.callbacks = CallbackList()  # setup(): the config's own (TensorBoard), these, the trackers
        self._user_callbacks = list(callbacks)
        self._print = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._logger: Logger | None = None  # the run directory's train.log, once there is one
        self._distributed = distributed  # False: a 1-process run even inside a torchrun job (teacher recipes)
        self._claim: resume.RunDirClaim | None = None  # rank 0's hold of the run directory while run() works
        self._setup_done = False
        self.clock = PhaseClock()  # wall seconds per phase of this invocation: summary.json's time_s
        self._started = (0.0, 0.0, 0.0)  # run(): (perf_counter, startup seconds, train_seconds before it)

    # the run's parts as trainer.<name> (RunParts), for the loop and for callbacks
    dist, run_dir, device, data, steps_per_epoch = (_part(n) for n in (
        "dist", "run_dir", "device", "data", "steps_per_epoch"))
    student, teacher, distiller, strategy, phases, precision, channels_last, teacher_sha256 = (_part(n) for n in (
        "student", "teacher", "distiller", "strategy", "phases", "precision", "channels_last", "teacher_sha256"))

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        """Train (or resume, or report a finished run); returns the summary. A failed setup leaves no
        run directory behind; a later error is also written to ``train.log``."""
        self._started = (time.perf_counter(), startup_seconds(), self.totals.train_seconds)
        try:
            return self._run()
        except BaseException as exc:
            if not self._setup_done:
                if self._claim is not None:
                    self._claim.discard(self._logger)
            elif self._logger is not None:
                what = str(exc) if isinstance(exc, AdakdError) else f"{type(exc).__name__}: {exc}"
                self._logger.info(f"error: {what}")
            raise
        finally:
            if self._claim is not None:
                self._claim.release()

    def _run(self) -> dict[str, Any]:
        with self.clock.phase("setup"):
            check_names_and_options(self.cfg)  # a typo fails now, not after a teacher has trained
            self.setup()
        self._setup_done = True
        cfg = self.cfg
        resume_state = None
        if cfg.resume and ddp.run_on_main(lambda: resume.has_checkpoint(self.run_dir)):
            resume_state = ddp.run_on_main(lambda: resume.load_resume_state(self.run_dir, self._log))
            self._restore(resume_state)
            self._started = (*self._started[:2], self.totals.train_seconds)
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
        with StopFlag() as stop:
            for index in range(start_phase, len(self.phases)):
                try:
                    self._run_phase(index, resume_state if index == start_phase else None, stop)
                finally:  # drop the phase's DDP: its hooks on modules a later phase trains; a live one with a
                    if (forward := self.phases[index].forward) is not None:  # comm hook aborts the exit
                        forward.unwrap()
        return self.finish(final=True)

    def _run_phase(self, index: int, state: dict[str, Any] | None, stop: StopFlag) -> None:
        phase = self.phases[index]
        if state is None and phase.on_start is not None:
            phase.on_start()
        self.callbacks.on_phase_start(self, phase)
        opt = self._phase_optimizer(phase)
        start_epoch, step, position = 0, 0, 0
        acc_state = None
        if state is not None:
            opt.optimizer.load_state_dict(state["optimizer"])
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
            step = self._run_epoch(index, phase, epoch, step, position, opt, acc, stop)
            position = 0
            self._end_epoch(index, phase, epoch, step, opt, acc)

    def _run_epoch(self, index: int, phase: Phase, epoch: int, step: int, position: int, opt: PhaseOptimizer,
                   acc: EpochAccumulator, stop: StopFlag) -> int:
        cfg, totals = self.cfg, self.totals
        self.strategy.on_epoch_start(epoch)
        phase.model.train()
        spe = self.steps_per_epoch
        bar = self._progress(spe, initial=position, desc=f"{phase.name} {epoch + 1}/{phase.epochs}")
        t0, samples0 = time.perf_counter(), acc.samples
        skip = cfg.train.on_nonfinite == "skip"
        scaled = self.strategy.ctx.grad_scaler is not None  # fp16: its loss scaler skips the steps that overflow
        bn_stats = nonfinite.batchnorm_stats([phase.model, *phase.modules]) if skip or scaled else []
        for i, batch in enumerate(self.data.train, start=position):
            if i >= spe:
                break
            lr = opt.schedule.set_step(step)
            ctx = DistillContext(labels=batch.y, indices=batch.index, epoch=epoch, step=step,
                                 epochs_total=phase.epochs, progress=step / spe)
            saved_bn = [t.clone() for t in bn_stats]
            terms = phase.step(batch, ctx, opt.optimizer)
            grad_skipped, bad_grad = opt.guard.take()
            if nonfinite.step_was_skipped(grad_skipped, opt.guard.take_stepped(), terms["loss"], skip, scaled):
                totals.skipped_steps += 1  # the strategy did not step; keep the epoch's means clean
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
                nonfinite.check_steps(acc, terms, phase.name, epoch, self._nonfinite_advice)
            every = cfg.train.checkpoint_every_steps
            checkpoint_now = bool(every and step % every == 0 and i + 1 < spe)
            stopping = False  # a signal is agreed over the ranks every STOP_CHECK_EVERY steps (no sync per step)
            if not self.dist.active or checkpoint_now or step % STOP_CHECK_EVERY == 0:
                stopping = ddp.agree_any(stop.signum is not None)
            if stopping or checkpoint_now:
                if cfg.train.on_nonfinite == "error":  # never save a state reached through a NaN/inf step
                    nonfinite.check_steps(acc, terms, phase.name, epoch, self._nonfinite_advice)
                if not cfg.train.sync_batchnorm:  # one model in the checkpoint: BN statistics of the job
                    ranks.agree_batchnorm_statistics(self._trained_modules())
                nonfinite.check_state(self._trained_modules(), phase.name, epoch, step, self._nonfinite_advice)
                totals.train_seconds += time.perf_counter() - t0
                totals.train_samples += acc.samples - samples0
                self._save(self.run_dir.last_checkpoint, self._state(index, epoch, step, opt.optimizer, acc, i + 1))
                t0, samples0 = time.perf_counter(), acc.samples  # the save is the checkpoint's time, not training's
                if stopping:
                    if bar is not None:
                        bar.close()
                    raise RunInterrupted(f"stopped by signal {stop.signum or 'on another rank'}; state saved in "
                                         f"{self.run_dir.last_checkpoint}. Continue with --resume.")
        if bar is not None:
            bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        totals.train_seconds += time.perf_counter() - t0
        totals.train_samples += acc.samples - samples0
        nonfinite.check_steps(acc, None, phase.name, epoch, self._nonfinite_advice)
        return step

    def _end_epoch(self, index: int, phase: Phase, epoch: int, step: int, opt: PhaseOptimizer,
                   acc: EpochAccumulator) -> None:
        cfg, totals = self.cfg, self.totals
        record: dict[str, Any] = {"kind": "epoch", "phase": phase.name, "epoch": self._global_epoch(index, epoch) + 1,
                                  "phase_epoch": epoch + 1, "lr": opt.schedule.set_step(max(step - 1, 0))}
        reduce_accumulator(acc)  # the job's epoch means (sums over the ranks)
        record.update(acc.means())
        last_epoch = epoch + 1 == phase.epochs
        if not cfg.train.sync_batchnorm:  # the evaluated model is the checkpointed one (issue 17, bug 1)
            ranks.agree_batchnorm_statistics(self._trained_modules())
        # before anything of this epoch is recorded
        nonfinite.check_state(self._trained_modules(), phase.name, epoch, step, self._nonfinite_advice)
        if phase.evaluate and ((epoch + 1) % cfg.train.eval_every == 0 or last_epoch):
            with self.clock.phase("eval"):
                result = evaluate(phase.model, self.data.test, self.device, self.precision, dist=self.dist)
            record.update({"test_top1": result["top1"], "test_top5": result["top5"], "test_loss": result["loss"]})
            if phase is self.phases[-1] and result["top1"] > totals.best["top1"]:
                totals.best = {"top1": result["top1"], "top5": result["top5"], "epoch": record["epoch"]}
                self._save(self.run_dir.checkpoints / "best.pt",
                           {"kind": "student", "model": self.strategy.export_student().state_dict(),
                            "meta": self.meta(), "epoch": record["epoch"], "top1": result["top1"]})
        record.update(self.strategy.epoch_metrics())
        if totals.skipped_steps:
            record["skipped_steps"] = totals.skipped_steps
        record["train_seconds"] = round(totals.train_seconds, 3)
        record["seconds"] = round(time.time(), 3)
        self.callbacks.on_epoch_end(self, record)
        self.run_dir.append_metrics(record)
        self._save(self.run_dir.last_checkpoint, self._state(index, epoch + 1, step, opt.optimizer, None, 0))
        self._log(f"[{phase.name} {epoch + 1}/{phase.epochs}] {describe_epoch(record)}")

    def finish(self, final: bool) -> dict[str, Any]:
        parts, totals = self.parts, self.totals
        records = [r for r in self.run_dir.read_metrics() if r.get("kind") == "epoch" and "test_top1" in r
                   and r.get("phase") == self.phases[-1].name]
        last = records[-1] if records else None  # the last evaluated epoch of the last phase
        student = self.strategy.export_student()
        if final:
            self._save(self.run_dir.checkpoints / "student.pt",
                       {"kind": "student", "model": student.state_dict(), "meta": self.meta()})
        summary = {
            "name": self.cfg.name, "run_dir": str(self.run_dir.path),
            "student": self.cfg.student.name, "teacher": self.cfg.teacher.name if self.cfg.teacher else None,
            "losses": list(self.cfg.losses),
            "strategy": self.cfg.strategy.name,
            "seed": self.cfg.seed,
            "epochs": self.cfg.train.epochs,
            "best_top1": totals.best["top1"],
            "best_epoch": totals.best["epoch"],
            "last_top1": last["test_top1"] if last else float("nan"),
            "last_top5": last["test_top5"] if last else float("nan"),
            "teacher_top1": parts.teacher_top1,
            "train_seconds": round(totals.train_seconds, 2),
            # the job's throughput: every rank trains on its own shard of each global batch
            "images_per_second": (round(totals.train_samples * self.dist.world_size / totals.train_seconds, 1)
                                  if totals.train_seconds else 0.0),
            "world_size": self.dist.world_size,
            "student_parameters": count_parameters(student),
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "fast_path_probe": parts.fast_path.record(),
            "time_s": self.time_breakdown(),
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
        self._log(phase_clock.describe(summary["time_s"]))
        return summary

    def time_breakdown(self) -> dict[str, float]:
        """This invocation's wall seconds by phase, ``startup`` (0 for a later run in the same process) to
        ``fixed_share``: :func:`adakd.runtime.phase_clock.breakdown`."""
        started, startup, train_before = self._started
        measured = {"startup": startup, **self.clock.seconds, "train_steps": self.totals.train_seconds - train_before}
        return phase_clock.breakdown(measured, startup + time.perf_counter() - started)

    # ------------------------------------------------------------------ setup
    def setup(self) -> RunParts:
        """Build the run's parts on every rank (rank 0 claims the run directory and decides for all)."""
        cfg = self.cfg
        dist = ddp.init_distributed(resolve_device(cfg.device)) if self._distributed else ddp.SINGLE
        if not dist.is_main:  # only rank 0 prints and writes
            self._print = lambda msg: None
        own_trackers = trackers.build_trackers(cfg, dist.is_main)  # checked now, before anything is written; last
        # among the callbacks, so they record each epoch as every other callback completed it
        # resume: auto (and torchrun restarts): rank 0 decides from the run directory, every rank follows
        self.cfg = cfg = ddp.run_on_main(lambda: resume.resolve_auto_resume(cfg, self.allow_changes, self._print))
        path = ddp.run_on_main(lambda: self._claim_run_dir(cfg))
        run_dir = RunDir(path) if dist.is_main else ranks.follower_run_dir(path)
        self._logger = run_dir.logger()
        self.parts = build_parts(cfg, dist, run_dir, self._log, self._train_recipe, self.clock)
        own = [TensorBoardWriter()] if cfg.train.tensorboard else []
        self.callbacks = CallbackList([*own, *self._user_callbacks, *own_trackers], is_main=dist.is_main)
        self.callbacks.on_setup(self)
        return self.parts

    def _claim_run_dir(self, cfg: RunConfig) -> str:
        """Rank 0: :func:`.resume.claim_run_dir`, held until run() ends; returns the directory for every rank."""
        self._claim = resume.claim_run_dir(cfg, self.allow_changes, dump_config(cfg), self._print)
        return str(self._claim.path)

    def _train_recipe(self, cfg: RunConfig) -> object:
        """Train a teacher recipe in this process alone (rank 0 of a job; the other ranks wait)."""
        with ddp.local_only():
            return Trainer(cfg, self._print, distributed=False).run()

    # ------------------------------------------------------------------ parts of the loop
    def _phase_optimizer(self, phase: Phase) -> PhaseOptimizer:
        ocfg = self.cfg.train.optimizer
        lr = ocfg.lr
        if ocfg.lr_reference_batch:
            lr *= self.data.train.batch_size * self.dist.world_size / ocfg.lr_reference_batch  # global batch
        optimizer = build_phase_optimizer(phase, ocfg, lr, self.device)
        if phase.forward is not None and self.dist.active:  # one DDP per phase, for its duration (see _run_phase)
            phase.forward.wrap(lambda m, unused: ddp.wrap_ddp(m, self.device, unused, self.cfg.train.deterministic))
        if phase.forward is None or not phase.forward.wrapped:  # DDP averages in the backward; others here
            optimizer = ddp.sync_gradients(optimizer)
        sched_cfg = self.cfg.train.schedule
        if phase.schedule == "constant":
            sched_cfg = sched_cfg.model_copy(update={"name": "constant", "warmup_epochs": 0.0})
        schedule = StepSchedule(optimizer, sched_cfg, phase.epochs, self.steps_per_epoch)
        skip = self.cfg.train.on_nonfinite == "skip" or self.strategy.ctx.grad_scaler is not None  # fp16: a fused
        return PhaseOptimizer(optimizer, schedule, GradGuard(optimizer, skip=skip))  # step sees the scaler's infs

    def _global_epoch(self, phase_index: int, epoch: int) -> int:
        return sum(p.epochs for p in self.phases[:phase_index]) + epoch

    def _nonfinite_advice(self) -> str:
        return nonfinite.advice_for(self.run_dir.last_checkpoint, self.dist.is_main, self.precision)

    def _trained_modules(self) -> list[nn.Module]:
        """Student, distiller and every phase's modules (heads, connectors): what a checkpoint holds."""
        return [self.student, *([self.distiller] if self.distiller is not None else []),
                *(m for p in self.phases for m in p.modules)]

    def _progress(self, total: int, initial: int, desc: str):
        if not self.cfg.progress or not sys.stderr.isatty():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

    def _log(self, msg: str) -> None:
        self._print(msg)
        if self._logger is not None:
            self._logger.info(msg)

    def _save(self, path: Path, payload: dict[str, Any]) -> None:
        """save_checkpoint on rank 0 only; ``last.pt``'s previous version stays as ``last.prev.pt``."""
        if self.dist.is_main:
            with self.clock.phase("checkpoint"):
                save_checkpoint(path, payload, keep_previous=path == self.run_dir.last_checkpoint)
        self.callbacks.on_checkpoint(self, path)

    # ------------------------------------------------------------------ state
    def _state(self, phase_index: int, epoch: int, step: int, optimizer: torch.optim.Optimizer,
               acc: EpochAccumulator | None, position: int) -> dict[str, Any]:
        scaler = self.strategy.ctx.grad_scaler
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
            "accumulator": accumulator_state(acc),
            "grad_scaler": None if scaler is None else scaler.state_dict(),  # fp16's loss scale
            "teacher_sha256": self.teacher_sha256,  # a resume checks it (resume.check_teacher)
            "best": self.totals.best,
            "train_seconds": self.totals.train_seconds,
            "train_samples": self.totals.train_samples,
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
        resume.check_teacher(state, self.teacher_sha256, self.run_dir.path, self.allow_changes, self._log)
        load_weights(self.student, state["model"], "the resumed checkpoint's student")
        if self.distiller is not None and state["distiller"] is not None:
            self.distiller.load_state_dict(state["distiller"])
        self.strategy.load_state_dict(state["strategy"])
        if (scaler := self.strategy.ctx.grad_scaler) is not None and state.get("grad_scaler") is not None:
            scaler.load_state_dict(state["grad_scaler"])
        self.totals.best = state["best"]
        self.totals.train_seconds = state["train_seconds"]
        self.totals.train_samples = state["train_samples"]


def train(cfg: RunConfig, log: Callable[[str], None] | None = None,
          allow_changes: tuple[str, ...] = (), callbacks: Iterable[Callback] = ()) -> dict[str, Any]:
    """Run ``cfg`` (and, with ``compare_scratch``, the same student without a teacher); return the summary.
    ``allow_changes``: config keys that may differ from a resumed run's own (see resume.ALLOWED_CHANGES);
    ``callbacks``: :class:`~adakd.engine.callbacks.Callback` objects called at the trainer's events.

    Under torchrun this joins the job (runtime/distributed.py) and leaves it at the end."""
    try:
        summary = Trainer(cfg, log, allow_changes=allow_changes, callbacks=callbacks).run()
        if cfg.compare_scratch and cfg.teacher is not None:
            scratch_cfg = cfg.scratch(Path(summary["run_dir"]) / "scratch")
            scratch = Trainer(scratch_cfg, log, allow_changes=allow_changes).run()
            summary["scratch"] = {k: scratch[k] for k in ("best_top1", "last_top1", "train_seconds", "images_per_second")}
            if ddp.is_main():
                RunDir(summary["run_dir"]).write_summary(summary)
    except BaseException:
        ddp.shutdown_distributed(clean=False)
        raise
    ddp.shutdown_distributed()
    return summary


__all__ = ["Trainer", "RunParts", "RunInterrupted", "NonFiniteLoss", "train", "count_parameters"]
