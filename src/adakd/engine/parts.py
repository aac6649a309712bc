"""What a run is made of (:class:`RunParts`) and how it is built from the config (:func:`build_parts`):
data, teacher (trained from its recipe or loaded; its test accuracy evaluated once per weights,
:mod:`.teacher_score`), student, the fast path (precision and memory format, :mod:`.probe`), distiller
and strategy with its phases, the teacher cache; the same initial weights on every rank of a torchrun job."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..config import RunConfig
from ..data import build_data
from ..models.contract import ContractModel
from ..runtime import distributed as ddp
from ..runtime.device import resolve_device
from ..runtime.phase_clock import PhaseClock
from ..runtime.seeding import seed_everything
from ..strategies import Phase, Strategy
from . import teacher_cache
from .components import build_components, build_student, spec_of
from .fast import compile_models
from .probe import FastPath, resolve_run_fast_path
from .run_dir import RunDir
from .teacher import load_teacher, teacher_checkpoint_path
from .teacher_score import teacher_test_top1


@dataclass
class RunParts:
    """What :meth:`Trainer.setup` builds for a run, on every rank."""

    dist: ddp.DistInfo
    run_dir: RunDir  # rank 0 writes it; on the other ranks every write is a no-op
    device: torch.device
    data: Any  # adakd.data.build_data's DataBundle: train/val/test loaders, info, num_train
    steps_per_epoch: int
    student: ContractModel
    teacher: ContractModel | None
    teacher_top1: float | None
    fast_path: FastPath  # the precision and memory format, and how they were chosen
    distiller: nn.Module | None
    strategy: Strategy
    phases: list[Phase]

    @property
    def precision(self) -> str:
        return self.fast_path.precision

    @property
    def channels_last(self) -> bool:
        return self.fast_path.channels_last

    @functools.cached_property
    def teacher_sha256(self) -> str | None:
        """sha256 of the teacher's weights: every training state carries it, and a resume checks it
        (:func:`.resume.check_teacher`)."""
        return None if self.teacher is None else teacher_cache.weights_hash(self.teacher)


def steps_per_epoch(cfg: RunConfig, data: Any) -> int:
    n = len(data.train)
    cap = cfg.train.max_steps_per_epoch
    return min(n, cap) if cap else n


def _to_device(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def build_parts(cfg: RunConfig, dist: ddp.DistInfo, run_dir: RunDir, log: Callable[[str], None],
                train_recipe: Callable[[RunConfig], object], clock: PhaseClock | None = None) -> RunParts:
    """Build every part of the run on this rank, in an order that keeps the student's initial weights
    independent of the teacher (``train_recipe``: trains a teacher recipe where its checkpoint is missing).
    ``clock`` gets the seconds of the phases ``teacher`` (recipe or load), ``probe`` and ``teacher_eval``."""
    clock = clock or PhaseClock()
    seed_everything(cfg.seed, cfg.train.deterministic)
    device = ddp.rank_device(resolve_device(cfg.device), dist)
    if cfg.data.global_batch_size is not None:  # this process's share of the global batch, from here on
        batch = cfg.data.per_process_batch(dist.world_size)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"batch_size": batch})})
        log(f"global batch {cfg.data.global_batch_size} = {dist.world_size} process(es) x {batch}")
    data = build_data(cfg.data, device, seed=cfg.seed, rank=dist.rank,
                      world_size=dist.world_size, log=log)  # memory format set below, once chosen
    steps = steps_per_epoch(cfg, data)
    teacher: ContractModel | None = None
    teacher_top1: float | None = None
    if cfg.teacher is not None:
        with clock.phase("teacher"):
            ckpt = ddp.run_on_main(lambda: teacher_checkpoint_path(cfg.teacher, cfg, train_recipe, log))
            teacher = load_teacher(cfg.teacher, data.info, device, ckpt)
    torch.manual_seed(cfg.seed)  # the student's init does not depend on whether a teacher was evaluated
    student = build_student(cfg.student, data.info).to(device)
    # precision / channels_last "auto": timed on copies of these models (engine/probe.py), rank 0's choice for all
    with clock.phase("probe"):
        fast_path = ddp.run_on_main(lambda: resolve_run_fast_path(cfg, device, student, teacher, data, steps))
    precision, channels_last = fast_path.precision, fast_path.channels_last
    log(fast_path.describe())
    for loader in (data.train, data.val, data.test):
        if loader is not None:
            loader.channels_last = channels_last
    if teacher is not None:
        _to_device(teacher, device, channels_last)
        with clock.phase("teacher_eval"):
            teacher_top1, cached = teacher_test_top1(cfg, teacher, data, device, precision, channels_last, dist)
        log(f"teacher {cfg.teacher.name}: test top-1 {teacher_top1:.2f}%"
            + (" (cached for these weights)" if cached else ""))
    _to_device(student, device, channels_last)
    if cfg.train.sync_batchnorm and dist.active:
        ddp.convert_sync_batchnorm(student, device)
    built = build_components(
        spec_of(cfg), student, teacher, device=device, precision=precision, channels_last=channels_last,
        num_classes=data.info.num_classes, num_train=data.num_train, steps_per_epoch=steps,
        val_loader=data.val, test_loader=data.test, run_dir=run_dir.path if dist.is_main else None,
        skip_nonfinite=cfg.train.on_nonfinite == "skip")
    teacher_cache.attach(cfg, teacher, built.distiller, built.strategy, data, device, log,
                         ddp.run_on_main)  # teacher.cache (issue 18)
    for module in (student, built.distiller):  # one set of initial weights for every rank
        if module is not None:
            ddp.broadcast_module(module)
    if cfg.train.sync_batchnorm and dist.active:  # connectors, auxiliary heads: every trained module
        for phase in built.phases:
            for module in phase.modules:
                ddp.convert_sync_batchnorm(module, device)
    if dist.active:  # steps that are one module call train through DistributedDataParallel (_phase_optimizer)
        wrapped = [p.name for p in built.phases if p.forward is not None]
        log(f"{dist.world_size} processes; gradients averaged by DistributedDataParallel in "
                  f"{wrapped or 'no phase'}, explicitly in {[p.name for p in built.phases if p.forward is None] or 'none'}")
    if cfg.train.compile:  # forward_features of student and teacher (what the strategies call)
        compile_models([student, teacher], device, cfg.train.compile_mode,
                       static_shapes=cfg.data.drop_last, cache_dir=run_dir.path / "inductor_cache")
    return RunParts(dist, run_dir, device, data, steps, student, teacher, teacher_top1, fast_path,
                    built.distiller, built.strategy, built.phases)
