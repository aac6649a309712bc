"""A rig: the models, strategy phase, optimiser and data of one (case, batch, path), ready to step."""
from __future__ import annotations

import os
import tempfile
import time
from typing import Iterator

import torch

from ...config import OptimizerConfig
from ...data import Batch, DeviceLoader
from ...engine.components import ComponentSpec, build_components, build_phase_optimizer
from ...engine.fast import compile_models
from ...engine.optim import parameters_of
from ...errors import ConfigError
from ...losses.base import DistillContext
from ...models import build_model
from ...strategies import Phase
from .data import PerSampleLoader, endless
from .memory import sync
from .settings import BenchCase, BenchSettings, PathSpec, mean_std


class Rig:
    """Models, strategy phase, optimiser and data of one (case, batch, path), ready to step."""

    def __init__(self, case: BenchCase, settings: BenchSettings, spec: PathSpec, batch_size: int,
                 device: torch.device, data: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.case, self.spec, self.device, self.batch_size = case, spec, device, batch_size
        s = settings
        images, labels = data
        loader_args = dict(mean=mean_std(s)[0], std=mean_std(s)[1], device=device,
                           channels_last=spec.channels_last)
        fast_train = DeviceLoader(images, labels, batch_size=batch_size, shuffle=True, augment=True,
                                  crop_padding=s.crop_padding, flip=True, drop_last=True, seed=s.seed, **loader_args)
        self.val = DeviceLoader(images, labels, batch_size=batch_size, drop_last=True, **loader_args)
        if spec.data == "device":
            self.batches: Iterator[Batch] = endless(fast_train)
        else:
            self.batches = iter(PerSampleLoader(images, labels, batch_size, s.crop_padding, *mean_std(s), device,
                                                seed=s.seed))
        torch.manual_seed(s.seed)  # the same weights on every path
        self.teacher = build_model(s.teacher, num_classes=s.num_classes, in_channels=s.in_channels,
                                   image_size=s.image_size, **s.teacher_kwargs)
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = build_model(s.student, num_classes=s.num_classes, in_channels=s.in_channels,
                                   image_size=s.image_size, **s.student_kwargs)
        parts = build_components(
            ComponentSpec(losses=case.losses, strategy=case.strategy, strategy_options=dict(case.options),
                          ce_weight=case.ce_weight, seed=s.seed), self.student, self.teacher, device=device, precision=spec.precision,
            channels_last=spec.channels_last, num_classes=s.num_classes, num_train=len(labels),
            steps_per_epoch=len(fast_train), val_loader=self.val, test_loader=self.val)
        self.distiller, self.strategy = parts.distiller, parts.strategy
        self.phase = pick_phase(parts.phases, case)
        if self.phase.on_start is not None:
            self.phase.on_start()
        self.strategy.on_epoch_start(0)
        params = parameters_of(self.phase.modules)
        if spec.optimizer == "torch-default":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=s.lr, momentum=0.9, weight_decay=5e-4)
        else:
            self.optimizer = build_phase_optimizer(self.phase, OptimizerConfig(lr=s.lr), s.lr, device)
        if spec.compile:
            cache = s.compile_cache_dir or os.path.join(tempfile.gettempdir(), "adakd-bench-inductor")
            compile_models([self.student, self.teacher], device, spec.compile_mode, static_shapes=True,
                           cache_dir=cache)
        self.phase.model.train()
        self.steps = 0
        self.loss_sum = torch.zeros((), device=device)

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        ctx = DistillContext(labels=batch.y, indices=batch.index, epoch=0, step=self.steps, epochs_total=1,
                             progress=0.0)
        terms = self.phase.step(batch, ctx, self.optimizer)
        self.steps += 1
        if self.spec.sync_every_step:  # the common code bases' meters: loss.item(), accuracy per step
            self.last_loss = float(terms["loss"])
            int(terms["correct"])
        else:
            self.loss_sum = self.loss_sum + terms["loss"].detach()
        return terms

    def window(self, steps: int) -> tuple[float, float]:
        """Run ``steps`` steps on fresh batches; return (seconds, mean loss), synced at the end."""
        sync(self.device)
        start = time.perf_counter()
        self.loss_sum = torch.zeros((), device=self.device)
        total = 0.0
        for _ in range(steps):
            self.step(next(self.batches))
            if self.spec.sync_every_step:
                total += self.last_loss
        sync(self.device)
        seconds = time.perf_counter() - start
        mean = total / steps if self.spec.sync_every_step else float(self.loss_sum) / steps
        return seconds, mean

    def data_rate(self, batches: int) -> float:
        """Images per second of the data pipeline alone."""
        next(self.batches)
        sync(self.device)
        start = time.perf_counter()
        for _ in range(batches):
            next(self.batches)
        sync(self.device)
        return batches * self.batch_size / (time.perf_counter() - start)

    def first_step(self, images: torch.Tensor, labels: torch.Tensor, settings: BenchSettings) -> float:
        """One step on a fixed, un-augmented batch (the same on every path); its loss."""
        mean, std = mean_std(settings)
        loader = DeviceLoader(images, labels, mean=mean, std=std, batch_size=self.batch_size, device=self.device,
                              channels_last=self.spec.channels_last)
        batch = loader.batch(torch.arange(self.batch_size, device=self.device))
        return float(self.step(batch)["loss"])


def pick_phase(phases: list[Phase], case: BenchCase) -> Phase:
    if case.phase is None:
        return phases[-1]
    for phase in phases:
        if phase.name == case.phase:
            return phase
    raise ConfigError(f"strategy {case.strategy!r} has no phase {case.phase!r} here "
                      f"(its phases: {', '.join(p.name for p in phases)}).")


__all__ = ["Rig", "pick_phase"]
