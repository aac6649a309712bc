"""Experiment trackers (MLflow, Weights & Biases) as trainer callbacks: ``train.trackers: [mlflow, wandb]``.

Each tracker receives, on rank 0 only, the resolved config as parameters, every epoch's record (after
the other callbacks added their keys), the summary, and with ``train.tracker_artifacts`` the student
file. It is checked when the run starts, before anything trains: a tracker that is not installed or a
server that cannot be reached is one :class:`~adakd.errors.ConfigError`. A tracker that fails later is
logged once and dropped; training goes on (the run directory stays the record of truth).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Tracker

if TYPE_CHECKING:
    from ...config import RunConfig


def build_trackers(cfg: "RunConfig", is_main: bool = True) -> list[Tracker]:
    """The trackers ``cfg.train.trackers`` names, checked now (imports, credentials, server); none off rank 0."""
    if not is_main:
        return []
    out: list[Tracker] = []
    for name in dict.fromkeys(cfg.train.trackers):  # each once, in the order given
        if name == "mlflow":
            from .mlflow_tracker import MLflowTracker

            out.append(MLflowTracker(cfg))
        elif name == "wandb":
            from .wandb_tracker import WandbTracker

            out.append(WandbTracker(cfg))
    return out


__all__ = ["Tracker", "build_trackers"]
