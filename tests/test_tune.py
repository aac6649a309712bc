"""adakd tune: the search file, a trial scored on the validation split, pruning, two workers on one storage,
a killed tuner resumed by re-running its command, the teacher trained once, the best config, the report."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="the tune extra is not installed (pip install -e '.[tune]')")

from adakd.config import load_config  # noqa: E402
from adakd.errors import ConfigError  # noqa: E402
from adakd.tools.tune.space import load_space, override  # noqa: E402
from adakd.tools.tune.study import run_tune  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_configs(folder: Path, root: Path, epochs: int = 2) -> Path:
    """A tiny teacher recipe and a KD student config (seconds per trial), with a validation split."""
    folder.mkdir(parents=True, exist_ok=True)
    common = {"seed": 0, "device": "cpu", "output_dir": str(folder / "runs"), "progress": False,
              "data": {"name": "fashion_mnist", "root": str(root), "batch_size": 32, "eval_batch_size": 500,
                       "train_subset": 192, "test_subset": 200, "val_fraction": 0.02},
              "train": {"epochs": epochs, "precision": "fp32", "channels_last": False, "optimizer": {"lr": 0.05},
                        "schedule": {"name": "cosine"}}}
    teacher = {**common, "name": "teacher", "student": {"name": "resnet8", "kwargs": {"widths": [8, 8, 16]}},
               "train": {**common["train"], "epochs": 1}}
    (folder / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    student = {**common, "name": "kd", "student": {"name": "resnet8", "kwargs": {"widths": [4, 4, 8]}},
               "teacher": {"name": "resnet8", "kwargs": {"widths": [8, 8, 16]}, "recipe": "teacher.yaml"},
               "losses": {"kd": {"temperature": 4.0}}}
    (folder / "kd.yaml").write_text(yaml.safe_dump(student))
    return folder / "kd.yaml"


def write_space(path: Path, trials: int = 3, **extra) -> Path:
    space = {"trials": trials, "pruner": "none", "seed": 0, "heartbeat": {"interval": 1, "grace": 3},
             "space": {"losses.kd.temperature": {"float": [1, 8], "log": True},
                       "train.optimizer.lr": {"choices": [0.02, 0.05]}}, **extra}
    path.write_text(yaml.safe_dump(space))
    return path


def study_of(study_dir: Path):
    meta = json.loads((study_dir / "tune.json").read_text())
    return optuna.load_study(study_name=meta["study"], storage=meta["storage"])


def states(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def tune_cmd(config: Path, space: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "adakd", "tune", str(config), "--space", str(space), "--out", str(out), *extra]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------------------------- the search file

def test_space_file_is_parsed_and_checked(tmp_path):
    space = load_space(write_space(tmp_path / "s.yaml", trials=7))
    assert space.study == "s" and space.trials == 7 and space.metric == "val_top1" and space.direction == "maximize"
    temp, lr = space.params
    assert (temp.key, temp.kind, temp.low, temp.high, temp.log) == ("losses.kd.temperature", "float", 1.0, 8.0, True)
    assert (lr.kind, lr.choices) == ("choices", (0.02, 0.05))
    assert override("losses.kd.temperature", 2.5) == "losses.kd.temperature=2.5"
    assert override("run_dir", "/a b/c") == "run_dir=/a b/c"
    bad = {"losses.kd.temperature": {"float": [8, 1]}}
    for spec, message in [(bad, "low 8 must be below high 1"),
                          ({"x.y": {"float": [0, 1], "log": True}}, "log range needs low > 0"),
                          ({"x.y": {"uniform": [0, 1]}}, "exactly one of float / int / choices"),
                          ({"x.y": {"choices": []}}, "non-empty list")]:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"space": spec}))
        with pytest.raises(ConfigError, match=message):
            load_space(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"space": {"a.b": {"int": [1, 2]}}, "metric": "test_top1"}))
    with pytest.raises(ConfigError, match="validation split only"):
        load_space(tmp_path / "bad.yaml")


def test_config_without_validation_split_or_bad_key_is_refused_before_any_trial(tmp_path, fmnist_root):
    config = write_configs(tmp_path, fmnist_root)
    space = write_space(tmp_path / "s.yaml")
    with pytest.raises(ConfigError, match="set data.val_fraction"):
        run_tune(config, space, ["data.val_fraction=0"], out=tmp_path / "study", log=lambda m: None)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"space": {"train.optimizer.lrr": {"float": [0.01, 0.1]}}}))
    with pytest.raises(ConfigError, match="space.train.optimizer.lrr = 0.01 does not give a valid config"):
        run_tune(config, tmp_path / "bad.yaml", out=tmp_path / "study", log=lambda m: None)
    assert not (tmp_path / "study" / "trials").exists()


# ----------------------------------------------------------------------------------------------- one worker

def test_a_study_of_ordinary_runs_scored_on_validation(tmp_path, fmnist_root, monkeypatch):
    monkeypatch.setenv("ADAKD_CACHE", str(tmp_path / "cache"))  # its own teacher cache: trained here, once
    config = write_configs(tmp_path, fmnist_root)
    lines: list[str] = []
    result = run_tune(config, write_space(tmp_path / "s.yaml", trials=3), out=tmp_path / "study", log=lines.append)
    study = study_of(tmp_path / "study")
    assert states(study) == {"COMPLETE": 3} and result["finished"] == 3
    assert sum("training teacher resnet8 from recipe" in m for m in lines) == 1  # the teacher is paid once
    for trial in study.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir == tmp_path / "study" / "trials" / f"trial-{trial.number:04d}"
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert trial.value == records[-1]["val_top1"]  # the final epoch's validation top-1, never test
        assert [r["val_top1"] for r in records] == [trial.intermediate_values[e] for e in (1, 2)]
        saved = load_config(run_dir / "config.yaml")
        assert saved.losses["kd"]["temperature"] == trial.params["losses.kd.temperature"]
        assert saved.train.optimizer.lr == trial.params["train.optimizer.lr"]
        assert (run_dir / "summary.json").is_file() and "using cached teacher" in (run_dir / "train.log").read_text()
    best = study.best_trial
    assert result["best_trial"] == best.number and result["best_value"] == best.value
    best_cfg = load_config(tmp_path / "study" / "best.yaml")  # trainable as it is
    assert best_cfg.losses["kd"]["temperature"] == best.params["losses.kd.temperature"]
    assert best_cfg.train.optimizer.lr == best.params["train.optimizer.lr"] and best_cfg.run_dir is None
    # the same command again: the study is done, nothing more runs
    again = run_tune(config, tmp_path / "s.yaml", out=tmp_path / "study", log=lambda m: None)
    assert again["finished"] == 3 and len(study_of(tmp_path / "study").trials) == 3

    from adakd.tools.report.table import build_report

    markdown, files = build_report(tmp_path / "study")
    names = {Path(f).name for f in files}
    assert {"tune_report.md", "trials.csv", "history.png", "importance.png"} <= names
    assert f"| {best.number} | COMPLETE | {best.value:.2f}" in markdown
    assert f"best trial: **{best.number}**" in markdown


def test_a_pruned_trial_stops_after_its_epoch_is_recorded(tmp_path, fmnist_root):
    from adakd.engine.trainer import Trainer  # noqa: F401
    from adakd.tools.tune.objective import run_trial
    from adakd.tools.tune.study import trial_config

    config = write_configs(tmp_path, fmnist_root, epochs=3)

    class GivesUp:  # an Optuna trial whose pruner gives up after the first report
        number = 0

        def __init__(self):
            self.reports, self.attrs = [], {}

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return True

        def set_user_attr(self, key, value):
            self.attrs[key] = value

    trial = GivesUp()
    cfg = trial_config(config, [], {}, tmp_path / "study", "s", 0)
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 1"):
        run_trial(cfg, trial, "val_top1", log=lambda m: None)
    run_dir = Path(trial.attrs["run_dir"])
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1] and trial.reports == [(1, records[0]["val_top1"])]
    assert (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "summary.json").exists()


def test_a_grid_study_runs_each_combination_once(tmp_path, fmnist_root):
    config = write_configs(tmp_path, fmnist_root, epochs=1)
    space = write_space(tmp_path / "g.yaml", trials=4, sampler="grid",
                        space={"losses.kd.temperature": {"choices": [2.0, 4.0]},
                               "train.optimizer.lr": {"choices": [0.02, 0.05]}})
    run_tune(config, space, out=tmp_path / "study", log=lambda m: None)
    study = study_of(tmp_path / "study")
    assert sorted(tuple(t.params.values()) for t in study.trials) == [(2.0, 0.02), (2.0, 0.05), (4.0, 0.02),
                                                                      (4.0, 0.05)]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"sampler": "grid", "space": {"a.b": {"float": [1, 2]}}}))
    with pytest.raises(ConfigError, match="sampler grid needs every key of space as"):
        load_space(tmp_path / "bad.yaml")


# ----------------------------------------------------------------------------------------------- many workers

@pytest.mark.slow
@pytest.mark.extended
def test_two_workers_on_one_sqlite_storage_finish_one_study(tmp_path, fmnist_root, monkeypatch):
    monkeypatch.setenv("ADAKD_CACHE", str(tmp_path / "cache"))  # its own teacher cache (the workers inherit it)
    config = write_configs(tmp_path, fmnist_root, epochs=1)
    space = write_space(tmp_path / "s.yaml", trials=4)
    out = tmp_path / "study"
    workers = [subprocess.Popen(tune_cmd(config, space, out), env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1][-2000:] for o in outputs]
    study = study_of(out)
    trials = study.get_trials(deepcopy=False)
    assert states(study).get("COMPLETE", 0) in (4, 5) and set(states(study)) == {"COMPLETE"}  # at most W-1 extra
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # none lost, none twice
    run_dirs = sorted(p.name for p in (out / "trials").iterdir())
    assert run_dirs == [f"trial-{t.number:04d}" for t in trials]  # one run directory per trial
    assert all((out / "trials" / d / "summary.json").is_file() for d in run_dirs)
    by_worker = [{int(x.split()[1].rstrip(":")) for x in o[1].splitlines() if x.startswith("trial ")} for o in outputs]
    assert by_worker[0] and by_worker[1] and not by_worker[0] & by_worker[1]  # both worked, on different trials
    assert by_worker[0] | by_worker[1] == {t.number for t in trials}
    assert sum(o[1].count("training teacher resnet8 from recipe") for o in outputs) == 1  # one worker paid for it


@pytest.mark.slow
@pytest.mark.extended
def test_a_killed_tuner_resumes_its_study_when_rerun(tmp_path, fmnist_root):
    config = write_configs(tmp_path, fmnist_root, epochs=3)
    space = write_space(tmp_path / "s.yaml", trials=3)
    out = tmp_path / "study"
    worker = subprocess.Popen(tune_cmd(config, space, out), env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    metrics = out / "trials" / "trial-0001" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.2)
    assert metrics.is_file(), "the second trial never recorded an epoch"
    worker.send_signal(signal.SIGKILL)  # no clean-up of any kind: the trial stays RUNNING in the database
    worker.wait()
    assert states(study_of(out)).get("RUNNING") == 1
    time.sleep(4)  # older than heartbeat.grace (3 s)
    rerun = subprocess.run(tune_cmd(config, space, out), env=env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    study = study_of(out)
    assert states(study) == {"COMPLETE": 3, "FAIL": 1}  # the killed trial failed, was retried, is not counted
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert failed.number == 1
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 1)
    assert retry.state.name == "COMPLETE" and retry.params == failed.params
    assert retry.user_attrs["run_dir"].endswith("trial-0001")  # continued in the killed trial's run directory
    assert "retry of 1" in rerun.stderr and "resum" in (out / "trials" / "trial-0001" / "train.log").read_text()
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]  # trial 2 is the retry, 3 a new one
    assert sorted(p.name for p in (out / "trials").iterdir()) == \
        sorted(Path(t.user_attrs["run_dir"]).name for t in complete) == ["trial-0000", "trial-0001", "trial-0003"]
