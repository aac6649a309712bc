"""What a run leaves behind can be trusted (issue 14): files are loaded without running code and with an
integrity check, no checkpoint holds a NaN/inf, ``--resume`` continues the same run or refuses, a failed
setup leaves nothing behind, and the newcomer's stumbles end in one clear message."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch

from adakd.cli import main
from adakd.engine.checkpoint import FORMAT, load_checkpoint
from adakd.errors import AdakdError, CheckpointError
from test_faults import adakd, tiny, write_config

REPO = Path(__file__).resolve().parents[1]


def finite_everywhere(path: Path) -> bool:
    state = load_checkpoint(path)["model"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fmnist_root) -> tuple[Path, dict]:
    """A finished 1-epoch tiny run (mid-epoch checkpoints every 3 steps) and its config."""
    base = tmp_path_factory.mktemp("finished")
    cfg = tiny(fmnist_root, base / "run", epochs=1)
    assert main(["train", str(write_config(base / "cfg.yaml", cfg))]) == 0
    return base / "run", cfg


def copy_run(finished: tuple[Path, dict], tmp_path: Path) -> tuple[Path, Path, dict]:
    """A copy of the finished run; returns (run dir, its config file, config)."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    cfg = {**finished[1], "run_dir": str(run)}
    return run, write_config(tmp_path / "cfg.yaml", cfg), cfg


# ------------------------------------------------------------------------------------ security
class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for any code a crafted file could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _evil(path: Path, marker: Path) -> Path:
    torch.save({"format": FORMAT, "kind": "training-state", "model": {"w": torch.zeros(1)},
                "meta": _Payload(marker)}, path)
    return path


@pytest.mark.parametrize("command", ["teacher", "resume", "eval", "export", "plot"])
def test_a_crafted_checkpoint_never_runs_its_payload(tmp_path, finished, fmnist_root, capsys, command):
    """Every command that opens a checkpoint refuses a pickle that would run code, and the code never runs."""
    marker = tmp_path / "payload-ran"
    run, config, cfg = copy_run(finished, tmp_path)
    if command == "teacher":
        cfg = tiny(fmnist_root, tmp_path / "kd")
        cfg.update(teacher={"name": "resnet8", "checkpoint": str(_evil(tmp_path / "t.pt", marker))},
                   losses={"kd": {}})
        argv = ["train", str(write_config(tmp_path / "kd.yaml", cfg))]
    elif command == "resume":
        _evil(run / "checkpoints" / "last.pt", marker)
        (run / "checkpoints" / "last.prev.pt").unlink()
        argv = ["train", str(config), "--resume"]
    elif command in ("eval", "export"):
        _evil(run / "checkpoints" / "student.pt", marker)
        argv = [command, str(run)] + (["--format", "safetensors"] if command == "export" else [])
    else:
        _evil(run / "checkpoints" / "last.pt", marker)
        argv = ["plot", str(run)]
    rc = main(argv)
    err = capsys.readouterr().err
    assert not marker.exists(), "the payload ran"
    assert rc == 2 and "refused" in err and "Traceback" not in err, err


def _evil_foreign(path: Path, marker: Path) -> Path:
    """A RepDistiller/mdistiller-shaped teacher file (``{"model": sd, "epoch": ...}``) with a payload."""
    torch.save({"model": {"conv1.weight": torch.zeros(16, 1, 3, 3)}, "epoch": 240, "opt": _Payload(marker)}, path)
    return path


@pytest.mark.parametrize("entry", ["build_model", "eval", "teacher", "load_foreign_state_dict"])
def test_a_crafted_foreign_weight_file_never_runs_its_payload(tmp_path, fmnist_root, capsys, entry):
    """The foreign-weights paths (issue 25) read weights-only too: build_model(weights=), eval --model --data,
    teacher.checkpoint with teacher.format, adakd.load_foreign_state_dict."""
    import adakd

    marker = tmp_path / "payload-ran"
    path = _evil_foreign(tmp_path / "ckpt_epoch_240.pth", marker)
    if entry in ("build_model", "load_foreign_state_dict"):
        with pytest.raises(CheckpointError, match="refused"):
            if entry == "build_model":
                adakd.build_model("resnet8", num_classes=10, in_channels=1, image_size=28, weights=path)
            else:
                adakd.load_foreign_state_dict(adakd.build_model("resnet8"), path, "reference")
    else:
        if entry == "eval":
            argv = ["eval", str(path), "--model", "resnet8", "--data", "fashion_mnist", "--data-root", str(fmnist_root)]
        else:
            cfg = tiny(fmnist_root, tmp_path / "kd")
            cfg.update(teacher={"name": "resnet8", "checkpoint": str(path), "format": "reference"}, losses={"kd": {}})
            argv = ["train", str(write_config(tmp_path / "kd.yaml", cfg))]
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and "refused" in err and "Traceback" not in err, err
    assert not marker.exists(), "the payload ran"


def _flip_a_weight_bit(path: Path) -> None:
    state = load_checkpoint(path)["model"]
    name = max(state, key=lambda k: state[k].numel())
    needle = state[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes()[:64]
    raw = bytearray(path.read_bytes())
    at = raw.find(needle)
    assert at > 0
    raw[at + 10] ^= 0x04
    path.write_bytes(bytes(raw))


def test_a_flipped_bit_is_detected_and_the_previous_checkpoint_used(tmp_path, finished, capsys):
    run, config, _ = copy_run(finished, tmp_path)
    last = run / "checkpoints" / "last.pt"
    _flip_a_weight_bit(last)
    with pytest.raises(CheckpointError, match="integrity check"):
        load_checkpoint(last)
    assert main(["train", str(config), "--resume"]) == 0  # last.prev.pt (a mid-epoch state): redo the rest
    err = capsys.readouterr().err
    assert "integrity check" in err and "falling back" in err and "last.prev.pt" in err
    a, b = (load_checkpoint(d / "checkpoints" / "student.pt")["model"] for d in (finished[0], run))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same student as the undamaged run
    assert "falling back" in (run / "train.log").read_text()


def test_rng_states_load_as_weights_only(finished):
    state = torch.load(finished[0] / "checkpoints" / "last.pt", weights_only=True)
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor) and state["sha256"]


# --------------------------------------------------------------------------------- non-finite
def test_a_huge_loss_weight_leaves_no_nan_checkpoint(tmp_path, fmnist_root, finished, capsys):
    """kd weight 1e38: the error says which step; last.pt (if any) and train.log are from a finite state."""
    cfg = tiny(fmnist_root, tmp_path / "kd", epochs=1, checkpoint_every_steps=1)
    cfg.update(teacher={"name": "resnet8", "kwargs": {"widths": [8, 16, 16]},
                        "checkpoint": str(finished[0] / "checkpoints" / "student.pt")},
               losses={"kd": {"weight": 1e38}})
    cfg["data"]["train_subset"] = 64
    assert main(["train", str(write_config(tmp_path / "kd.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert "NaN/inf" in err and "precision=fp32" not in err  # the run is fp32 already
    for f in (tmp_path / "kd" / "checkpoints").glob("*.pt"):
        assert finite_everywhere(f), f
    assert "error: " in (tmp_path / "kd" / "train.log").read_text()


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_skipped_steps_leave_batchnorm_untouched_and_checkpoints_finite(tmp_path, fmnist_root, capsys, mode):
    """lr 1e30: step 0 blows the weights up. skip: steps 1-2 are skipped (no update and no BatchNorm
    statistics); error: stops. Either way every checkpoint is finite, parameters and buffers."""
    cfg = tiny(fmnist_root, tmp_path / "run", epochs=1, checkpoint_every_steps=1, on_nonfinite=mode,
               optimizer={"lr": 1e30}, schedule={"name": "constant"})
    cfg["data"]["train_subset"] = 48  # 3 steps of 16
    rc = main(["train", str(write_config(tmp_path / "a.yaml", cfg))])
    capsys.readouterr()
    assert rc == (0 if mode == "skip" else 2)
    files = list((tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert files and all(finite_everywhere(f) for f in files)
    if mode == "skip":
        student = load_checkpoint(tmp_path / "run" / "checkpoints" / "student.pt")["model"]
        counts = {int(v) for k, v in student.items() if k.endswith("num_batches_tracked")}
        assert counts == {1}  # only step 0's forward counted


def test_a_float32_overflowing_lr_is_one_config_error(tmp_path, fmnist_root, capsys):
    cfg = tiny(fmnist_root, tmp_path / "run", optimizer={"lr": 1e300})
    assert main(["train", str(write_config(tmp_path / "a.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert "train.optimizer.lr" in err and "float32" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------- resume
def test_resume_with_another_config_is_refused_and_writes_nothing(tmp_path, finished, capsys):
    run, config, _ = copy_run(finished, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    rc = main(["train", str(config), "train.optimizer.lr=0.1", "seed=3", "train.epochs=2", "--resume"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "train.optimizer.lr: 0.05 -> 0.1" in err and "seed: 0 -> 3" in err and "train.epochs: 1 -> 2" in err
    assert "--allow-changes train.epochs" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before
    assert main(["train", str(config), "seed=3", "--resume", "--allow-changes", "seed"]) == 2
    assert "only train.epochs" in capsys.readouterr().err


@pytest.mark.parametrize("order", ["override first", "override after --allow-changes"])
def test_resume_with_allowed_more_epochs_continues_and_records_it(tmp_path, finished, capsys, order):
    run, config, _ = copy_run(finished, tmp_path)
    argv = (["train", str(config), "train.epochs=2", "--resume", "--allow-changes", "train.epochs"]
            if order == "override first" else  # nargs="+" must not swallow the override as a key
            ["train", str(config), "--resume", "--allow-changes", "train.epochs", "train.epochs=2"])
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert history[-1]["changes"] == {"train.epochs": [1, 2]}
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2]


def test_a_run_written_before_a_new_config_key_still_resumes(tmp_path, finished, capsys):
    """A key added to the schema later (here train.tensorboard) compares as its default, not as a change."""
    run, config, _ = copy_run(finished, tmp_path)
    stored = yaml.safe_load((run / "config.yaml").read_text())
    del stored["train"]["tensorboard"]
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    assert main(["train", str(config), "train.epochs=2", "--resume", "--allow-changes", "train.epochs"]) == 0, \
        capsys.readouterr().err
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert history[-1]["changes"] == {"train.epochs": [1, 2]}


def test_resume_of_a_finished_run_rewrites_nothing(tmp_path, finished, capsys):
    run, config, _ = copy_run(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in (run / "summary.json", run / "config.yaml")}
    assert main(["train", str(config), "--resume"]) == 0
    assert "already finished" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (run / "summary.json", run / "config.yaml")} == before


def test_resume_of_a_run_that_never_started_says_so(tmp_path, fmnist_root, capsys):
    cfg = tiny(fmnist_root, tmp_path / "run", epochs=1, max_steps_per_epoch=2)
    assert main(["train", str(write_config(tmp_path / "a.yaml", cfg)), "--resume"]) == 0
    assert "no checkpoint in" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["teacher", "data"])
def test_a_failed_setup_leaves_no_run_directory(tmp_path, fmnist_root, finished, capsys, kind):
    """A teacher that does not fit / missing data: exit 2, no run directory left, the same run_dir works next."""
    cfg = tiny(fmnist_root, tmp_path / "runs" / "run")
    if kind == "teacher":
        cfg.update(teacher={"name": "resnet8", "checkpoint": str(finished[0] / "checkpoints" / "student.pt")},
                   losses={"kd": {}})  # a widths-8/16/16 checkpoint for a default resnet8
    else:
        cfg["data"]["root"] = str(tmp_path / "no-data")
    config = write_config(tmp_path / "a.yaml", cfg)
    for _ in range(2):  # the second attempt is not refused for "already holds a run"
        assert main(["train", str(config)]) == 2
        err = capsys.readouterr().err
        assert ("does not fit" if kind == "teacher" else "data.root=") in err and "already holds" not in err
        assert not (tmp_path / "runs").exists()
    if kind == "data":
        assert "--data-root" not in err.split("`adakd eval`")[0]  # train does not take --data-root


def test_stale_temporaries_are_cleaned_at_start(tmp_path, finished, capsys):
    run, config, _ = copy_run(finished, tmp_path)
    stale = run / "checkpoints" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", str(config), "--resume"]) == 0
    assert not stale.exists() and "removed" in capsys.readouterr().err


def test_full_disk_when_creating_the_run_names_it_and_leaves_no_probe(tmp_path, fmnist_root):
    config = write_config(tmp_path / "a.yaml", tiny(fmnist_root, tmp_path / "run"))
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))  # noqa: E731  (every write fails)
    proc = adakd("train", str(config), preexec_fn=limit)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err and "Logging error" not in err, err
    assert str(tmp_path / "run") in err
    assert not list(tmp_path.rglob(".write_test"))


# ------------------------------------------------------------------------------- newcomer
def test_version_flag():
    out = subprocess.run([sys.executable, "-m", "adakd", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("adakd ")


def test_a_bad_student_name_fails_before_the_teacher_trains(tmp_path, fmnist_root, capsys, monkeypatch):
    recipe = write_config(tmp_path / "teacher.yaml", tiny(fmnist_root, tmp_path / "unused"))
    cfg = tiny(fmnist_root, tmp_path / "run")
    cfg.update(teacher={"name": "resnet8", "kwargs": {"widths": [8, 16, 16]}, "recipe": str(recipe)},
               losses={"kd": {}}, student={"name": "resnet8x"})
    monkeypatch.setenv("ADAKD_CACHE", str(tmp_path / "cache"))
    assert main(["train", str(write_config(tmp_path / "a.yaml", cfg))]) == 2
    assert "unknown model 'resnet8x'" in capsys.readouterr().err
    assert not list((tmp_path / "cache").rglob("*.pt"))  # no teacher was trained


def test_summary_records_world_size(finished):
    summary = json.loads((finished[0] / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["images_per_second"] > 0


def test_small_messages():
    from adakd.config import validate
    from adakd.errors import ConfigError
    from adakd.tools.export import _require
    from adakd.registry import STRATEGIES

    with pytest.raises(AdakdError, match="-c constraints.txt"):
        _require("adakd_no_such_module", "onnx", "ONNX export")
    with pytest.raises(ConfigError, match="adakd list strategies"):
        STRATEGIES.get("nope")
    with pytest.raises(ConfigError, match="train.epochs"):
        validate({"data": {"name": "fashion_mnist"}, "student": {"name": "resnet8"}, "train": {"epochs": True}})


def test_report_of_the_results_folder_reproduces_the_committed_table(tmp_path):
    from adakd.tools.report.table import build_report

    folder = REPO / "results" / "fmnist-methods"
    committed = (folder / "results.md").read_text()
    for target in (folder, REPO / "sweeps" / "fmnist_methods.yaml"):  # the README's form and the sweep's
        _, files = build_report(target, tmp_path)
        assert files[0].read_text() == committed, target


def test_plot_of_several_runs_writes_beside_them_not_into_the_cwd(tmp_path, finished, monkeypatch):
    pytest.importorskip("matplotlib")
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        shutil.copytree(finished[0], runs / name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["plot", str(runs / "a"), str(runs / "b")]) == 0
    assert not list(cwd.iterdir()) and (runs / "plots-compare").is_dir()
