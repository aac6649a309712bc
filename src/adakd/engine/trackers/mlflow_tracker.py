"""MLflow: ``train.trackers: [mlflow]`` (the ``mlflow`` extra: mlflow-skinny + SQLAlchemy).

Where: ``$MLFLOW_TRACKING_URI`` (a server ``http://host:5000``, a database ``postgresql://...``), by
default the SQLite database ``OUTPUT_DIR/mlflow.db`` with artifacts in ``OUTPUT_DIR/mlartifacts``
(``mlflow ui --backend-store-uri sqlite:///OUTPUT_DIR/mlflow.db`` shows it). Experiment:
``$MLFLOW_EXPERIMENT_NAME`` (default ``adakd``). The run is named after the run directory.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ...errors import ConfigError
from .base import Tracker, scalars

#: MLflow's limits per log_batch request.
_PARAMS_PER_BATCH, _MAX_PARAM_CHARS = 100, 6000


def default_tracking_uri(output_dir: str | Path) -> str:
    return f"sqlite:///{(Path(output_dir).expanduser().resolve() / 'mlflow.db')}"


@contextmanager
def _no_retries() -> Iterator[None]:
    """The start-up check asks a server once, briefly (MLflow otherwise retries for minutes)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("train.trackers: mlflow is not installed: pip install -c constraints.txt "
                              "'adakd[mlflow]' (or remove mlflow from train.trackers).") from None
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(cfg.output_dir)
        self.experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "adakd"
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            with _no_retries():
                self.client = MlflowClient(tracking_uri=self.uri)
                self.experiment_id = self._experiment(cfg.output_dir)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store is the same message
            raise ConfigError(f"train.trackers: the MLflow tracking store {self.uri} cannot be reached "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Start the "
                              "server or fix MLFLOW_TRACKING_URI (unset: a local sqlite file in output_dir), or "
                              "remove mlflow from train.trackers.") from None
        self.run_id: str | None = None

    def _experiment(self, output_dir: str) -> str:
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is not None:
            return found.experiment_id
        local = self.uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI")
        location = (Path(output_dir).expanduser().resolve() / "mlartifacts").as_uri() if local else None
        try:
            return self.client.create_experiment(self.experiment_name, artifact_location=location)
        except Exception:  # noqa: BLE001 - created meanwhile by another process
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is None:
                raise
            return found.experiment_id

    def start(self, run_dir: Path, params: dict[str, Any], config: dict[str, Any], resume_id: str | None) -> str:
        from mlflow.entities import Param

        if resume_id is not None:
            try:
                self.client.get_run(resume_id)
                self.client.update_run(resume_id, status="RUNNING")
                self.run_id = resume_id  # params were logged when it started (MLflow params are write-once)
                return resume_id
            except Exception:  # noqa: BLE001 - gone from this store: start a new run
                pass
        run = self.client.create_run(self.experiment_id, run_name=run_dir.name,
                                     tags={"adakd.run_dir": str(run_dir.resolve())})
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _PARAMS_PER_BATCH])
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, summary: dict[str, Any], student_file: Path | None) -> None:
        self.client.log_dict(self.run_id, summary, "summary.json")
        final = scalars(summary, "summary/")
        if final:
            self.log_metrics(final, int(summary.get("epochs") or 0))
        if student_file is not None:
            self.client.log_artifact(self.run_id, str(student_file), "checkpoints")
        self.client.set_terminated(self.run_id, "FINISHED")
