"""One trial = one ordinary run directory, scored on the held-out validation split.

:class:`ValidationReporter` is a trainer callback: after each epoch of the run's last phase it
evaluates the student on the validation split (``data.val_fraction`` of the training images; the
test split is never looked at), adds ``val_top1``/``val_top5``/``val_loss`` to the epoch record
(so ``metrics.jsonl`` and the trackers have them), reports the metric to the Optuna trial, and stops
a trial the pruner gives up on once that epoch's record and checkpoint are written (the run stays
resumable). The trial's value is the metric of the run's final epoch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ...engine.callbacks import Callback
from ...engine.evaluate import evaluate
from ...errors import ConfigError


class ValidationReporter(Callback):
    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.prune_after_checkpoint = False
        self.epoch = 0

    def on_epoch_end(self, trainer, record: dict[str, Any]) -> None:
        last = trainer.phases[-1]
        if record.get("phase") != last.name:
            return
        result = evaluate(last.model, trainer.data.val, trainer.device, trainer.precision, dist=trainer.dist)
        record.update({"val_top1": result["top1"], "val_top5": result["top5"], "val_loss": result["loss"]})
        self.trial.report(record[self.metric], step=int(record["phase_epoch"]))
        self.epoch = int(record["phase_epoch"])
        self.prune_after_checkpoint = self.epoch < last.epochs and self.trial.should_prune()

    def on_checkpoint(self, trainer, path: Path) -> None:
        if self.prune_after_checkpoint and Path(path) == trainer.run_dir.last_checkpoint:
            import optuna

            raise optuna.TrialPruned(f"trial {self.trial.number} pruned after epoch {self.epoch}")


def final_metric(run_dir: Path, metric: str) -> float:
    """The metric of the run's last recorded validation epoch (also for a run that had finished before a kill)."""
    path = run_dir / "metrics.jsonl"
    values = [r[metric] for r in map(json.loads, path.read_text().splitlines()) if metric in r] if path.is_file() else []
    if not values:
        raise ConfigError(f"{run_dir}: no epoch recorded {metric}; the trial produced no validation score.")
    return float(values[-1])


def run_trial(cfg: Any, trial: Any, metric: str, log: Callable[[str], None]) -> float:
    """Train ``cfg`` (resume=auto: a retried trial continues its own run directory) and return its score."""
    from ...engine.trainer import train

    trial.set_user_attr("run_dir", str(cfg.resolved_run_dir()))
    summary = train(cfg, log=log, callbacks=[ValidationReporter(trial, metric)])
    return final_metric(Path(summary["run_dir"]), metric)
