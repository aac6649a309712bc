"""Trainer events, and the writers and recorders that listen to them.

The trainer calls every callback of a run at these points (rank 0 and the others alike; writers
check :attr:`Callback.main_only`):

    on_setup(trainer)                      models, data and strategy built, before any step
    on_phase_start(trainer, phase)         a phase (pretrain / search / train) begins or resumes
    on_step_end(trainer, step, terms)      after each optimisation step; ``terms`` are device tensors
                                           (reading them with .item() costs a host sync: don't, per step)
    on_epoch_end(trainer, record)          the epoch's record (metrics.jsonl line), before it is written;
                                           a callback may add keys to it
    on_checkpoint(trainer, path)           a checkpoint was written
    on_run_end(trainer, summary)           the summary, before summary.json is written

The run's own records use the same events: :class:`TensorBoardWriter` (``train.tensorboard``) and
the ABL analysis's gradient recorder (:mod:`adakd.tools.report.analysis_plots`) are callbacks.
Add your own with ``Trainer(cfg, callbacks=[...])`` or ``adakd.train(cfg, callbacks=[...])``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from torch import Tensor

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..strategies import Phase
    from .trainer import Trainer


class Callback:
    """Base class: every event is a no-op. ``main_only`` callbacks run on rank 0 only."""

    main_only: bool = False

    def on_setup(self, trainer: "Trainer") -> None: ...

    def on_phase_start(self, trainer: "Trainer", phase: "Phase") -> None: ...

    def on_step_end(self, trainer: "Trainer", step: int, terms: dict[str, Tensor]) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None: ...

    def on_checkpoint(self, trainer: "Trainer", path: Path) -> None: ...

    def on_run_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None: ...


class CallbackList(Callback):
    """Calls each event on every callback in order (``main_only`` ones on rank 0 only)."""

    def __init__(self, callbacks: Iterable[Callback] = (), is_main: bool = True) -> None:
        self.callbacks = [c for c in callbacks if is_main or not c.main_only]

    def on_setup(self, trainer: "Trainer") -> None:
        for c in self.callbacks:
            c.on_setup(trainer)

    def on_phase_start(self, trainer: "Trainer", phase: "Phase") -> None:
        for c in self.callbacks:
            c.on_phase_start(trainer, phase)

    def on_step_end(self, trainer: "Trainer", step: int, terms: dict[str, Tensor]) -> None:
        for c in self.callbacks:
            c.on_step_end(trainer, step, terms)

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_epoch_end(trainer, record)

    def on_checkpoint(self, trainer: "Trainer", path: Path) -> None:
        for c in self.callbacks:
            c.on_checkpoint(trainer, path)

    def on_run_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_run_end(trainer, summary)


#: Keys of an epoch record that are not scalars to plot.
_NOT_SCALARS = {"kind", "phase", "epoch", "phase_epoch", "seconds"}


class TensorBoardWriter(Callback):
    """Every numeric key of each epoch record as a TensorBoard scalar, in ``RUN_DIR/tensorboard``
    (``train.tensorboard: true``; needs the ``tensorboard`` extra). Tags are ``<phase>/<key>``, the
    step is the run's global epoch; a resumed run appends to the same event files' directory."""

    main_only = True

    def __init__(self, log_dir: str | Path | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise ConfigError("train.tensorboard needs the tensorboard package: pip install -c constraints.txt "
                              "'adakd[tensorboard]' (or set train.tensorboard=false).") from None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.writer: Any = None

    def on_setup(self, trainer: "Trainer") -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.log_dir or trainer.run_dir.path / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        phase, step = record.get("phase", "train"), int(record.get("epoch", 0))
        for key, value in record.items():
            if key not in _NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{phase}/{key}", value, step)
        self.writer.flush()

    def on_run_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


__all__ = ["Callback", "CallbackList", "TensorBoardWriter"]
