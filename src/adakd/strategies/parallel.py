"""Steps that torch's ``DistributedDataParallel`` can train: a phase's forward passes as one module call.

DDP averages gradients inside the backward of what its wrapped module's ``forward`` returned (bucketed
all-reduces, overlapped with the backward). A strategy step that calls ``student.forward_features``,
the teacher and the distiller itself is invisible to it; so a step that can be expressed as
"forward -> one loss -> one backward -> one optimiser step" (the standard strategy, the distillers'
connector pre-training) puts its forward passes in a small module (its submodules: exactly what the
phase's optimiser trains; the strategy, teacher included, held outside the module tree) and calls it
through :class:`DataParallelForward`, which the trainer wraps under torchrun. Steps that cannot (SAKD,
ABL: ``torch.autograd.grad``, ``backward(inputs=...)``, several steps per batch) average explicitly
(``runtime.distributed.sync_gradients``, where the reason is spelt out).
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn

from ..data import Batch
from ..losses.base import DistillContext


class DataParallelForward:
    """A phase's forward passes as one ``nn.Module`` call, so that ``DistributedDataParallel`` sees them.

    ``module.forward`` runs the student, the teacher and the distiller and returns the loss (and what the
    step reports); its registered submodules hold the parameters the phase's optimiser trains. The step
    calls this object; under torchrun the trainer replaces ``module`` by ``DistributedDataParallel(module)``
    (:meth:`wrap`) and leaves the optimiser's own averaging off. ``find_unused_parameters``: whether some of
    those parameters may get no gradient in a step (connectors used in some steps or phases only)."""

    def __init__(self, module: nn.Module, find_unused_parameters: bool = False) -> None:
        self.module = module
        self.find_unused_parameters = find_unused_parameters
        self.wrapped = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def wrap(self, wrapper: Callable[[nn.Module, bool], nn.Module]) -> None:
        """``module <- wrapper(module, find_unused_parameters)`` (once)."""
        if not self.wrapped:
            self._plain = self.module
            self.module = wrapper(self.module, self.find_unused_parameters)
            self.wrapped = self.module is not self._plain

    def unwrap(self) -> None:
        """Back to the plain module; the wrapper (and its hooks on the parameters) is released. A phase's DDP
        must not outlive the phase: its reducer's hooks on modules that a later phase trains through another
        DDP (FT's paraphraser: pre-trained, then part of the main phase's distiller) break that one."""
        if self.wrapped:
            self.module, self._plain = self._plain, None
            self.wrapped = False
            import gc

            gc.collect()  # the reducer removes its hooks when it is freed; do not wait for a later collection


def _unique(modules: list[nn.Module | None]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for m in modules:
        if m is not None and all(m is not u for u in out):
            out.append(m)
    return out


class LossForward(nn.Module):
    """(batch, ctx) -> ``compute(batch, ctx)``: the standard strategy's (loss, terms, logits), or the
    connector pre-training's (loss, logits) (``Strategy.pretrain_loss``). Registered: ``trained`` (the
    student and the distiller; the pre-trained modules), the strategy held outside the module tree."""

    def __init__(self, compute: Callable[[Batch, DistillContext], Any], trained: list[nn.Module | None]) -> None:
        super().__init__()
        self.trained = nn.ModuleList(_unique(list(trained)))
        self._compute = [compute]

    def forward(self, batch: Batch, ctx: DistillContext) -> Any:
        return self._compute[0](batch, ctx)


def has_trainable(module: nn.Module | None) -> bool:
    return module is not None and any(p.requires_grad for p in module.parameters())
