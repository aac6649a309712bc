"""Weights & Biases: ``train.trackers: [wandb]`` (the ``wandb`` extra).

Online with a key (``wandb login`` or ``$WANDB_API_KEY``), or ``WANDB_MODE=offline`` (files only, in
``RUN_DIR/wandb/``; upload later with ``wandb sync``). Project: ``$WANDB_PROJECT`` (default ``adakd``),
entity ``$WANDB_ENTITY``; the run is named after the run directory.
"""
from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ...errors import ConfigError
from .base import Tracker

#: Modes in which wandb writes local files only.
_LOCAL_MODES = ("offline", "disabled", "dryrun")


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("train.trackers: wandb is not installed: pip install -c constraints.txt "
                              "'adakd[wandb]' (or remove wandb from train.trackers).") from None
        self.mode = os.environ.get("WANDB_MODE", "online")
        if self.mode not in _LOCAL_MODES:
            url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
            host = url.hostname or "api.wandb.ai"
            if not _has_api_key(host):
                raise ConfigError("train.trackers: wandb is online but has no API key: run `wandb login` or set "
                                  "WANDB_API_KEY, or set WANDB_MODE=offline (upload later with `wandb sync`).")
            try:
                socket.create_connection((host, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
            except OSError as exc:
                raise ConfigError(f"train.trackers: the W&B server {host} cannot be reached ({exc}). Check the "
                                  "network or WANDB_BASE_URL, or set WANDB_MODE=offline.") from None
        self.run: Any = None

    def start(self, run_dir: Path, params: dict[str, Any], config: dict[str, Any], resume_id: str | None) -> str:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "adakd", entity=os.environ.get("WANDB_ENTITY") or None,
            name=run_dir.name, dir=str(run_dir), config=config, id=resume_id,
            resume="allow" if resume_id else None, reinit="finish_previous", settings=wandb.Settings(silent=True, console="off"))
        return self.run.id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict[str, Any], student_file: Path | None) -> None:
        import wandb

        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))})
        if student_file is not None:
            artifact = wandb.Artifact(f"student-{self.run.id}", type="model")
            artifact.add_file(str(student_file))
            self.run.log_artifact(artifact)
        self.run.finish()
        self.run = None
