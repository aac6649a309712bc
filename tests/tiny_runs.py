"""Helpers for tests that run tiny real trainings: dotted config updates, and killing a run mid-epoch."""
from __future__ import annotations

from typing import Any, Callable

from adakd.engine.trainer import Trainer


class Killed(Exception):
    """Raised inside a training step to simulate a kill."""


def apply_dotted(cfg: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """Set ``{"train.optimizer.lr": 0.1, ...}`` into the nested ``cfg`` (in place); returns ``cfg``."""
    for key, value in updates.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def kill_after_steps(monkeypatch, steps: int, when: Callable[[Any, int], bool]) -> Callable[[], None]:
    """Patch ``Trainer._run_epoch`` so that the epochs chosen by ``when(phase, call_number)`` (calls counted
    from 1) raise :class:`Killed` right after their ``steps``-th step, before the trainer records or
    checkpoints it. Returns a function that puts the real ``_run_epoch`` back."""
    original = Trainer._run_epoch
    calls = [0]

    def dying(self, index, phase, *args):
        calls[0] += 1
        if when(phase, calls[0]):
            real_step, count = phase.step, [0]

            def step_then_die(batch, ctx, opt):
                out = real_step(batch, ctx, opt)
                count[0] += 1
                if count[0] == steps:
                    raise Killed()
                return out

            phase.step = step_then_die
        return original(self, index, phase, *args)

    monkeypatch.setattr(Trainer, "_run_epoch", dying)
    return lambda: monkeypatch.setattr(Trainer, "_run_epoch", original)
