"""The non-finite guard: a NaN/inf loss, gradient, parameter or buffer stops the run (``train.on_nonfinite:
error``) before anything reached through it is saved, or the step is skipped (``skip``).

* gradients: :class:`GradGuard` wraps the phase optimiser's ``step`` (largest |g| checked first); in fp16 the
  loss scaler skips a step with an inf/NaN gradient (an overflow of its scale S, which it halves) and the guard
  notes that no step ran: the trainer counts it as a skipped step whatever ``on_nonfinite`` says (a NaN/inf
  *loss* is still an error under ``error``);
* the loss: :class:`~adakd.engine.accumulator.EpochAccumulator` marks the first bad step on the device, read
  by :func:`check_steps` every 50 steps, before a checkpoint and at the epoch's end (one host sync each);
* the state: :func:`check_state` before every checkpoint and evaluation (every parameter and buffer finite).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import AdakdError
from ..runtime import distributed as ddp
from .accumulator import EpochAccumulator


class NonFiniteLoss(AdakdError):
    """A NaN/inf loss, gradient, parameter or buffer; the last good checkpoint is kept."""


class GradGuard:
    """Wraps a phase optimiser's ``step`` so that gradients are checked first (largest |g| finite).

    ``skip``: a step with a NaN/inf gradient does not run (one decision for every rank) and ``skipped``
    is set. Otherwise the step runs and ``bad`` keeps a device flag (no host sync per step); the trainer
    reads it with the loss, before any checkpoint is written."""

    def __init__(self, optimizer: torch.optim.Optimizer, skip: bool) -> None:
        self.skip = skip
        self.skipped = False
        self.stepped = False  # whether step was called at all since the last take (fp16's scaler may not)
        self.bad: Tensor | None = None
        step = optimizer.step

        def guarded_step(*args: Any, **kwargs: Any) -> Any:
            self.stepped = True
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

    def take_stepped(self) -> bool:
        """Whether step was called since the last call; resets it."""
        out, self.stepped = self.stepped, False
        return out


def batchnorm_stats(modules: list[nn.Module]) -> list[Tensor]:
    """BatchNorm running statistics (mean, var, count) of ``modules``, each once: what a skipped step's
    forward must not change."""
    seen: dict[int, Tensor] = {}
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                for t in (m.running_mean, m.running_var, m.num_batches_tracked):
                    if t is not None:
                        seen.setdefault(id(t), t)
    return list(seen.values())


def advice_for(last_checkpoint: Path, is_main: bool, precision: str) -> str:
    """The end of every non-finite error: where the last good state is, and what to change."""
    if is_main and not last_checkpoint.exists():
        good = "No checkpoint was written yet."
    else:
        good = f"The last good checkpoint (verified finite) is {last_checkpoint}."
    fp32 = "" if precision == "fp32" else ", use precision=fp32"
    return f"{good} Lower the lr or a loss weight{fp32}, or set train.on_nonfinite=skip to skip such steps."


def check_steps(acc: EpochAccumulator, terms: dict[str, Tensor] | None, phase: str, epoch: int,
                advice: Callable[[], str]) -> None:
    """Raise :class:`NonFiniteLoss` if a step of ``acc`` on any rank had a NaN/inf loss or gradient
    (``terms``: the last step's, to name the non-finite ones)."""
    bad = ddp.agree_min(acc.bad_step())
    if bad is None:
        return
    which = ""
    if terms is not None:
        names = [k for k, v in terms.items() if k != "correct" and not bool(torch.isfinite(v))]
        which = f" (non-finite terms: {', '.join(names)})" if names else ""
    what = "loss" if which else "loss or its gradients"
    raise NonFiniteLoss(f"{what} became NaN/inf at step {bad} (phase {phase}, epoch {epoch + 1}){which}. {advice()}")


def check_state(modules: list[nn.Module], phase: str, epoch: int, step: int, advice: Callable[[], str]) -> None:
    """Before a checkpoint or an evaluation is recorded: every parameter and buffer of ``modules`` (the first
    one's names unprefixed) must be finite on every rank, else :class:`NonFiniteLoss`."""
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
        f"the model became NaN/inf by step {step} (phase {phase}, epoch {epoch + 1}): {len(names)} "
        f"parameters/buffers (e.g. {', '.join(names[:3])}); nothing was saved from this state. {advice()}")


def step_was_skipped(grad_skipped: bool, stepped: bool, loss: Tensor, skip: bool, scaled: bool) -> bool:
    """Whether a step's update did not happen and must not count (nor its BatchNorm statistics):
    ``on_nonfinite: skip``'s NaN/inf (a gradient the guard refused, or a non-finite loss on any rank), or,
    with fp16's loss scaler (``scaled``), a step the scaler skipped for an overflowing gradient. Under
    ``on_nonfinite: error`` a NaN/inf *loss* stays the guard's error, so each step has one decision."""
    if scaled and (grad_skipped or not stepped):
        grad_skipped = skip or ddp.all_finite(loss)
    return grad_skipped or (skip and not ddp.all_finite(loss))
