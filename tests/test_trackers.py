"""Experiment trackers (train.trackers): what a real run logged, read back with each tracker's own tools;
a missing extra or an unreachable server is one message before anything trains; a failure mid-run is logged
and the run goes on."""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from adakd.config import validate
from adakd.config import flatten
from adakd.engine.trainer import train
from adakd.errors import ConfigError
from test_callbacks import tiny as callback_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(tmp_path: Path, root: Path, **updates) -> dict:
    """test_callbacks' tiny run, named ``tracked``."""
    return callback_run(tmp_path, root, **{"name": "tracked", **updates})


def records_of(summary: dict) -> list[dict]:
    return [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------- MLflow

def test_mlflow_run_read_back_with_its_own_client(tmp_path, fmnist_root, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[mlflow]')")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "trackers-test")
    cfg = validate(tiny(tmp_path, fmnist_root, **{"train.trackers": ["mlflow"], "train.tracker_artifacts": True}))
    summary = train(cfg, log=lambda m: None)
    run_dir = Path(summary["run_dir"])
    db = tmp_path / "runs" / "mlflow.db"
    assert db.is_file()  # the default store: a sqlite database in output_dir
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert client.get_experiment(run.info.experiment_id).name == "trackers-test"
    params = run.data.params  # the resolved config, as dotted keys
    assert params["train.optimizer.lr"] == "0.05" and params["student.name"] == "resnet8"
    assert params["data.train_subset"] == "128" and params["train.trackers"] == "['mlflow']"
    records = records_of(summary)
    history = client.get_metric_history(run_id, "train/test_top1")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r["test_top1"])) for r in records]
    assert [m.value for m in client.get_metric_history(run_id, "train/loss")] == \
        [pytest.approx(r["loss"]) for r in records]
    assert run.data.metrics["summary/best_top1"] == pytest.approx(summary["best_top1"])
    artifacts = {a.path for a in client.list_artifacts(run_id)} | \
        {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert {"summary.json", "checkpoints/student.pt"} <= artifacts
    local = Path(client.download_artifacts(run_id, "checkpoints/student.pt", str(tmp_path / "dl")))
    assert local.read_bytes() == (run_dir / "checkpoints" / "student.pt").read_bytes()


def test_mlflow_unreachable_server_is_one_message_before_training(tmp_path, fmnist_root, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    cfg = validate(tiny(tmp_path, fmnist_root, **{"train.trackers": ["mlflow"]}))
    with pytest.raises(ConfigError, match=rf"MLflow tracking store http://127.0.0.1:{port} cannot be reached"):
        train(cfg, log=lambda m: None)
    assert not (tmp_path / "runs" / "tracked").exists()  # nothing written, nothing trained


def test_a_tracker_failing_mid_run_is_logged_and_training_goes_on(tmp_path, fmnist_root, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from adakd.engine.trackers.mlflow_tracker import MLflowTracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    calls = []

    def broken(self, metrics, step):
        calls.append(step)
        raise ConnectionError("server went away")

    monkeypatch.setattr(MLflowTracker, "log_metrics", broken)
    lines: list[str] = []
    summary = train(validate(tiny(tmp_path, fmnist_root, **{"train.trackers": ["mlflow"]})), log=lines.append)
    assert len(records_of(summary)) == 2 and summary["best_top1"] > 0  # both epochs trained and recorded
    assert calls == [1]  # dropped after its first failure
    warnings = [m for m in lines if "tracker mlflow failed" in m]
    assert len(warnings) == 1 and "server went away" in warnings[0] and "training goes on" in warnings[0]


# ----------------------------------------------------------------------------------------------- W&B

def read_wandb_records(path: Path) -> list:
    """The protobuf records of a W&B run file (``run-ID.wandb``): a 7-byte header (':W&B', magic, version),
    then LevelDB-log blocks of 32 KiB holding chunks (crc32c, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_read_back_from_its_files(tmp_path, fmnist_root, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install -e '.[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "trackers-test")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    cfg = validate(tiny(tmp_path, fmnist_root, **{"train.trackers": ["wandb"], "train.tracker_artifacts": True}))
    summary = train(cfg, log=lambda m: None)
    run_dir = Path(summary["run_dir"])
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]
    files = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    records = read_wandb_records(files[0])
    config, history, summary_items, artifacts = {}, [], {}, []
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            summary_items.update({i.key: json.loads(i.value_json) for i in r.summary.update})
        elif kind == "artifact":
            artifacts.append((r.artifact.type, [m.path for m in r.artifact.manifest.contents]))
        elif kind == "run":  # the config given to wandb.init travels in the run record
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
            assert r.run.project == "trackers-test" and r.run.display_name == run_dir.name
    assert config["train"]["optimizer"]["lr"] == 0.05 and config["student"]["name"] == "resnet8"
    logged = [(h["_step"], h["train/test_top1"]) for h in history if "train/test_top1" in h]
    assert logged == [(r["epoch"], pytest.approx(r["test_top1"])) for r in records_of(summary)]
    assert summary_items["best_top1"] == pytest.approx(summary["best_top1"])
    assert ("model", ["student.pt"]) in artifacts


# ----------------------------------------------------------------------------------------------- missing extras

@pytest.mark.parametrize("tracker, module", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_tracker_not_installed_is_one_message_before_training(tmp_path, fmnist_root, monkeypatch, tracker, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if the extra were not installed
    if module == "mlflow":
        monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    cfg = validate(tiny(tmp_path, fmnist_root, **{"train.trackers": [tracker]}))
    with pytest.raises(ConfigError, match=rf"{tracker} is not installed: pip install -c constraints.txt "
                                          rf"'adakd\[{tracker}\]'"):
        train(cfg, log=lambda m: None)
    assert not (tmp_path / "runs" / "tracked").exists()


def test_wandb_online_without_a_key_is_one_message(tmp_path, fmnist_root, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = validate(tiny(tmp_path, fmnist_root, **{"train.trackers": ["wandb"]}))
    with pytest.raises(ConfigError, match="wandb is online but has no API key"):
        train(cfg, log=lambda m: None)


def test_unknown_tracker_is_a_config_error(tmp_path, fmnist_root):
    with pytest.raises(ConfigError, match="train.trackers"):
        validate(tiny(tmp_path, fmnist_root, **{"train.trackers": ["neptune"]}))


def test_flatten_gives_the_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
