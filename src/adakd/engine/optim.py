"""Optimiser and per-step learning-rate schedule.

The schedule is a function of fractional epochs e = step / steps_per_epoch:
  multistep: lr * gamma^(number of milestones <= e)
  cosine:    lr * (m + (1 - m) * (1 + cos(pi * e / E)) / 2),   m = min_lr_ratio
  onecycle:  linear up to lr over the warm-up (default 30% of E), then linear down to lr * m
  constant:  lr
and a linear warm-up from 0 over ``warmup_epochs`` multiplies any of them.
"""
from __future__ import annotations

import bisect
import math
from typing import Iterable

import torch
from torch import nn

from ..config import OptimizerConfig, ScheduleConfig


def lr_factor(epoch: float, total_epochs: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base lr at fractional epoch ``epoch``."""
    if cfg.name == "multistep":
        factor = cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), epoch)
    elif cfg.name == "cosine":
        progress = min(epoch / max(total_epochs, 1e-12), 1.0)
        factor = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.name == "onecycle":
        peak = cfg.warmup_epochs if cfg.warmup_epochs > 0 else 0.3 * total_epochs
        if epoch < peak:
            return max(epoch / peak, 1e-3)
        progress = min((epoch - peak) / max(total_epochs - peak, 1e-12), 1.0)
        return 1.0 - (1.0 - cfg.min_lr_ratio) * progress
    else:
        factor = 1.0
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        factor *= max(epoch / cfg.warmup_epochs, 1e-3)
    return factor


def parameters_of(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """Trainable parameters of ``modules``, each once."""
    seen: set[int] = set()
    params = []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


#: Per-parameter attributes a module may set to change how the optimiser treats that parameter.
LR_SCALE_ATTR = "adakd_lr_scale"  # lr multiplier (e.g. AEKT's serialization layer)
NO_DECAY_ATTR = "adakd_no_weight_decay"  # exclude from weight decay


def _param_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """Group parameters by (lr scale, weight decay); one group when nobody asked for anything special."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for p in params:
        scale = float(getattr(p, LR_SCALE_ATTR, 1.0))
        decay = 0.0 if getattr(p, NO_DECAY_ATTR, False) else weight_decay
        groups.setdefault((scale, decay), []).append(p)
    return [{"params": ps, "lr_scale": scale, "weight_decay": decay} for (scale, decay), ps in groups.items()]


def build_optimizer(params: list[nn.Parameter], cfg: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    """SGD (foreach) or AdamW. Every parameter has the configured weight decay (as in the reference code
    bases), except those a module marked with ``adakd_no_weight_decay``; ``adakd_lr_scale`` multiplies a
    parameter's lr (its group keeps ``lr_scale`` so the schedule applies it)."""
    groups = _param_groups(params, cfg.weight_decay)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay, foreach=True)


class StepSchedule:
    """Sets every param group's lr from :func:`lr_factor` at each step; stateless apart from the base lr."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_epochs: int,
                 steps_per_epoch: int) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_epochs = total_epochs
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]

    def set_step(self, step: int) -> float:
        factor = lr_factor(step / self.steps_per_epoch, self.total_epochs, self.cfg)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        first = self.optimizer.param_groups[0]
        return self.base_lrs[0] / first.get("lr_scale", 1.0) * factor
