"""The run directory: the unit of record of one run.

    RUN_DIR/
      config.yaml          resolved config (every default spelled out)
      resolved.yaml        the strategy's and each distiller's options as resolved, defaults included
      metrics.jsonl        one JSON line per epoch (epoch, lr, losses, accuracies, seconds, ...)
      summary.json         best/last top-1, epochs, train seconds, images/s, ...
      train.log            the log
      checkpoints/last.pt  full training state (resume); best.pt (best student); student.pt (final student weights)
      .lock                held (flock) by the process training in it: a second one is refused
"""
from __future__ import annotations

import fcntl
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ..errors import AdakdError
from .checkpoint import atomic_write_text


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class RunDirLock:
    """Exclusive hold of a run directory by the process that trains in it (``flock`` on ``RUN_DIR/.lock``).

    Two processes writing one run directory (a sweep started twice, ``--resume`` in two shells) would
    interleave checkpoints and records; the second one gets an error instead. The operating system
    drops the lock when the process ends, however it ends, so a killed run never leaves it stale."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path) / ".lock"
        self._handle: Any = None

    def acquire(self) -> "RunDirLock":
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise AdakdError(f"run directory {self.path.parent} is in use by another adakd process (pid {holder}): "
                             "wait for it to end or stop it, or choose another run_dir.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class _QuietFileHandler(logging.FileHandler):
    """A log file whose failed writes (a full disk) do not print logging's traceback: the log is a copy of
    what is printed, and the write that matters (a checkpoint, a record) reports the error itself."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # -- layout -----------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def resolved_path(self) -> Path:
        return self.path / "resolved.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    def create(self) -> None:
        probe = self.path / ".write_test"
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            try:
                probe.write_text("ok")
            finally:
                probe.unlink(missing_ok=True)  # also when the write failed (a full disk): nothing left behind
        except OSError as exc:
            raise AdakdError(
                f"cannot write to run directory {self.path}: {exc.strerror or exc}. "
                "Choose a writable location with output_dir=... or run_dir=..."
            ) from None

    # -- records ----------------------------------------------------------------
    def write_config(self, text: str) -> None:
        atomic_write_text(self.config_path, text)

    def append_metrics(self, record: dict[str, Any]) -> None:
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(_jsonable(record)) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # name the file (a failed write() does not)
            raise OSError(exc.errno, exc.strerror, str(self.metrics_path)) from None

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: ignore it
                continue
        return out

    def truncate_metrics(self, keep: int) -> None:
        """Keep the first ``keep`` epoch records (a resumed run rewrites what came after its checkpoint)."""
        records = [r for r in self.read_metrics() if r.get("kind", "epoch") != "epoch" or r.get("epoch", 0) <= keep]
        atomic_write_text(self.metrics_path, "".join(json.dumps(_jsonable(r)) + "\n" for r in records))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(_jsonable(summary), indent=2) + "\n")

    def read_summary(self) -> dict[str, Any] | None:
        if not self.summary_path.exists():
            return None
        return json.loads(self.summary_path.read_text())

    # -- log ------------------------------------------------------------------------
    def logger(self, name: str = "adakd") -> logging.Logger:
        logger = logging.getLogger(f"{name}.{self.path.resolve()}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        if not logger.handlers:
            handler = _QuietFileHandler(self.path / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            logger.addHandler(handler)
        return logger
