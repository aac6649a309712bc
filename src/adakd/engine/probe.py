"""The fast-path probe of a run: :mod:`adakd.runtime.timing` (candidates, the rule, the cache, the timing)
applied to the run's own training step.

What is timed: the strategy's own training step (teacher forward, student forward/backward, the
distiller, the optimiser step) on deep copies of the run's models, at the run's batch size, on a
synthetic batch of the run's image shape; the run's weights are never touched. A run whose teacher
outputs come from ``teacher.cache`` (:mod:`.teacher_cache`: a cacheable distiller and strategy) times
that step: the teacher's outputs for the batch are computed once before timing and served as the cache
serves them, so no teacher forward is timed. The cache key (:func:`run_key`): device model, torch
version, threads, models, losses, strategy, whether ``teacher.cache`` is on, batch size and image shape
-- not the seed nor the run's name, so the runs of a sweep that differ only there share one probe.
Rank 0 of a job probes; the trainer broadcasts its choice.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from ..runtime.device import device_model
from ..runtime.timing import Candidate, FastPath, StepBuilder, Timer, resolve_fast_path, time_steps


def strategy_step_builder(cfg: Any, student: torch.nn.Module, teacher: torch.nn.Module | None,
                          device: torch.device, *, num_classes: int, image_shape: tuple[int, int, int],
                          num_train: int, steps_per_epoch: int, val_loader: Any = None,
                          test_loader: Any = None) -> StepBuilder:
    """A :data:`StepBuilder` for a run config: per candidate, copies of ``student`` and ``teacher``,
    the config's distiller and strategy built on them (no run directory), the strategy's main phase
    and optimiser, and one step of it on a synthetic batch."""
    from ..losses.base import DistillContext
    from .components import build_components, build_phase_optimizer, spec_of, synthetic_batch

    def build(c: Candidate) -> Callable[[], None]:
        s, t = copy.deepcopy(student), copy.deepcopy(teacher)
        parts = build_components(spec_of(cfg), s, t, device=device, precision=c.precision,
                                 channels_last=c.channels_last, num_classes=num_classes, num_train=num_train,
                                 steps_per_epoch=steps_per_epoch, val_loader=val_loader, test_loader=test_loader)
        phase = parts.phases[-1]
        if phase.on_start is not None:
            phase.on_start()
        parts.strategy.on_epoch_start(0)
        phase.model.train()
        optimizer = build_phase_optimizer(phase, cfg.train.optimizer, cfg.train.optimizer.lr, device)
        batch = synthetic_batch(cfg.data.batch_size, image_shape, num_classes, num_train, device, c.channels_last)
        if serves_from_cache(cfg, parts.distiller, parts.strategy):
            parts.strategy.teacher_cache = FixedFeed(batch.x, t)
        ctx = DistillContext(labels=batch.y, indices=batch.index, epoch=0, step=0, epochs_total=1, progress=0.0)

        def step() -> None:
            float(phase.step(batch, ctx, optimizer)["loss"])  # the host read waits for the device

        return step

    return build


def serves_from_cache(cfg: Any, distiller: Any, strategy: Any) -> bool:
    """Whether the run's training steps read the teacher's outputs from ``teacher.cache`` (teacher_cache.attach)."""
    from .teacher_cache import teacher_outputs_of

    return (cfg.teacher is not None and cfg.teacher.cache != "off" and teacher_outputs_of(distiller) is not None
            and getattr(strategy, "uses_teacher_cache", True))


class FixedFeed:
    """The probe's stand-in for :class:`.teacher_cache.TeacherFeed`: the teacher's outputs (logits, pooled;
    fp32, as the cache stores them) of the one synthetic batch, computed once, served for that batch."""

    def __init__(self, x: torch.Tensor, teacher: torch.nn.Module) -> None:
        from ..models.contract import Features

        with torch.no_grad():
            f = teacher.forward_features(x)
        self._x = x
        self._features = Features(logits=f.logits.float(), stages=[], preact_stages=[], pooled=f.pooled.float())

    def features_for(self, x: torch.Tensor) -> Any:
        return self._features if x is self._x else None


def run_key(cfg: Any, device: torch.device, image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """What a probe's timings hold for: device model, torch, threads, models, losses, strategy, teacher cache
    on or off (the step runs the teacher or reads its outputs), batch, shape."""
    teacher = cfg.teacher
    key = {"device": device_model(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "student": [cfg.student.name, cfg.student.kwargs],
           "teacher": None if teacher is None else [teacher.name, teacher.kwargs],
           "losses": cfg.losses, "strategy": [cfg.strategy.name, cfg.strategy.options],
           "batch_size": cfg.data.batch_size, "image_shape": list(image_shape)}
    if teacher is not None and teacher.cache != "off":  # only then: the live runs' keys (and cached probes) stay
        key["teacher_outputs"] = "cache"
    return key


def strategy_supports_fp16(name: str) -> bool:
    """Whether strategy ``name`` scales its steps for fp16 (``Strategy.supports_fp16``)."""
    from ..registry import STRATEGIES

    return bool(getattr(STRATEGIES.get(name).factory, "supports_fp16", False))


def resolve_run_fast_path(cfg: Any, device: torch.device, student: torch.nn.Module,
                          teacher: torch.nn.Module | None, data: Any, steps_per_epoch: int,
                          timer: Timer | None = None) -> FastPath:
    """:func:`resolve_fast_path` for a run (the trainer calls it on rank 0 of a job and broadcasts the result)."""
    from ..runtime import distributed as ddp

    info = data.info
    shape = tuple(data.train.images.shape[1:])
    if timer is None:
        build = strategy_step_builder(cfg, student, teacher, device, num_classes=info.num_classes, image_shape=shape,
                                      num_train=data.num_train, steps_per_epoch=steps_per_epoch,
                                      val_loader=data.val, test_loader=data.test)
        timer = lambda options: time_steps(build, options)  # noqa: E731
    with ddp.local_only():  # the other ranks wait for rank 0's answer
        return resolve_fast_path(cfg.train.precision, cfg.train.channels_last, device, timer,
                                 run_key(cfg, device, shape), fp16=strategy_supports_fp16(cfg.strategy.name))

