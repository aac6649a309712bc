"""What every tracker does with the trainer's events; a subclass only talks to its service.

    on_setup      start (or, for a resumed run, reopen) the tracker's run; the resolved config as parameters
    on_epoch_end  the epoch record's numbers as metrics ``<phase>/<key>`` at step = the run's global epoch
    on_run_end    the summary; the student file when ``train.tracker_artifacts``; the run is closed

The tracker's run id is kept in ``RUN_DIR/trackers.json`` so that ``--resume`` continues the same run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import flatten
from ...runtime.atomic import atomic_write_text
from ..callbacks import _NOT_SCALARS, Callback

if TYPE_CHECKING:
    from ...config import RunConfig
    from ..trainer import Trainer


def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The plottable numbers of a record (no booleans, none of the bookkeeping keys)."""
    return {f"{prefix}{k}": float(v) for k, v in record.items()
            if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker(Callback):
    """Base class: the events, the run-id file and the "fail once, log, go on" rule around a service."""

    main_only = True
    name = "tracker"

    def __init__(self, cfg: "RunConfig") -> None:
        self.cfg = cfg
        self.failed = False
        self.trainer: "Trainer | None" = None

    # ---------------------------------------------------------------- the service (subclasses)
    def start(self, run_dir: Path, params: dict[str, Any], config: dict[str, Any], resume_id: str | None) -> str:
        """Open the tracker's run (``resume_id``: the run to continue); return its id."""
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def finish(self, summary: dict[str, Any], student_file: Path | None) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- events
    def _safely(self, what: str, call, *args) -> None:
        if self.failed:
            return
        try:
            call(*args)
        except Exception as exc:  # noqa: BLE001 - a tracker never stops the training
            self.failed = True
            message = (f"warning: tracker {self.name} failed while {what} ({type(exc).__name__}: {exc}); "
                       "it gets no more records from this run, training goes on (the run directory has everything)")
            log = getattr(self.trainer, "_log", None)
            log(message) if log is not None else print(message, flush=True)

    def on_setup(self, trainer: "Trainer") -> None:
        self.trainer = trainer
        self._safely("starting its run", self._start, trainer)

    def _start(self, trainer: "Trainer") -> None:
        ids_path = trainer.run_dir.path / "trackers.json"
        ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
        config = trainer.cfg.model_dump(mode="json")
        run_id = self.start(trainer.run_dir.path, flatten(config), config, ids.get(self.name))
        if ids.get(self.name) != run_id:
            ids[self.name] = run_id
            atomic_write_text(ids_path, json.dumps(ids, indent=2) + "\n")

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        metrics = scalars(record, f"{record.get('phase', 'train')}/")
        self._safely(f"logging epoch {record.get('epoch')}", self.log_metrics, metrics, int(record.get("epoch", 0)))

    def on_run_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        student = trainer.run_dir.checkpoints / "student.pt"
        wanted = self.cfg.train.tracker_artifacts and student.is_file()
        self._safely("logging the summary", self.finish, summary, student if wanted else None)
