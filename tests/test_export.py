"""`adakd export` (torchscript, safetensors, onnx round trips + sidecar + errors), the multi-run
compare plot, and the ABL-paper analyses (logit-correlation difference, gradient magnitudes), on one
tiny real KD run on Fashion-MNIST."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adakd.cli import main
from adakd.config import validate
from adakd.data import DataConfig, build_data
from adakd.engine.checkpoint import load_checkpoint, save_checkpoint
from adakd.engine.trainer import Trainer
from adakd.errors import AdakdError, CheckpointError, ConfigError
from adakd.tools.export import _CHECKERS, CheckResult, ExportMismatch, export_student
from adakd.models import build_model
from adakd.tools.report import analysis_plots
from adakd.tools.report.analysis_plots import (GradientMagnitudeRecorder, compute_logit_correlation,
                                         correlation_difference, logit_correlation, GradientMagnitudeCallback)
from adakd.tools.report.compare_plots import plot_compare
from adakd.tools.report.plots import plot_run

TINY = {"name": "resnet8", "kwargs": {"widths": [4, 8, 8]}}
PNG = b"\x89PNG\r\n\x1a\n"


def _tiny_kd_config(out: Path, root: Path, teacher_ckpt: Path) -> dict:
    return {
        "name": "tiny-kd", "seed": 0, "device": "cpu", "output_dir": str(out), "progress": False,
        "data": {"name": "fashion_mnist", "root": str(root), "batch_size": 32, "eval_batch_size": 200,
                 "train_subset": 64, "test_subset": 200},
        "student": TINY,
        "teacher": {**TINY, "checkpoint": str(teacher_ckpt)},
        "ce_weight": 0.5, "losses": {"kd": {"weight": 0.5, "temperature": 4.0}},
        "train": {"epochs": 2, "precision": "fp32", "channels_last": False,
                  "optimizer": {"lr": 0.05}, "schedule": {"name": "constant"}},
    }


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, fmnist_root) -> Path:
    """A 2-epoch KD run (4 steps) from a random-init teacher, with the gradient record switched on."""
    base = tmp_path_factory.mktemp("export")
    teacher_ckpt = base / "teacher.pt"
    torch.manual_seed(123)
    teacher = build_model(TINY["name"], num_classes=10, in_channels=1, image_size=28, **TINY["kwargs"])
    save_checkpoint(teacher_ckpt, {"model": teacher.state_dict()})
    recorder = GradientMagnitudeCallback()
    trainer = Trainer(validate(_tiny_kd_config(base / "runs", fmnist_root, teacher_ckpt)), log=lambda m: None,
                      callbacks=[recorder])
    summary = trainer.run()
    assert recorder.recorder is not None
    return Path(summary["run_dir"])


def _student(run: Path, which: str = "student.pt") -> torch.nn.Module:
    state = load_checkpoint(run / "checkpoints" / which)
    model = build_model(TINY["name"], num_classes=10, in_channels=1, image_size=28, **TINY["kwargs"])
    model.load_state_dict(state["model"])
    return model.eval()


def _pixel_stats(root: Path) -> tuple[float, float]:
    """Mean and std of the Fashion-MNIST training pixels in [0, 1], from the raw IDX file's histogram."""
    raw = gzip.decompress((root / "fashion-mnist" / "train-images-idx3-ubyte.gz").read_bytes())
    counts = np.bincount(np.frombuffer(raw, dtype=np.uint8, offset=16), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = (counts * values).sum() / counts.sum()
    return mean, float(np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum()))


# --------------------------------------------------------------------------- export round trips

def test_torchscript_round_trip_and_sidecar(kd_run, tmp_path, fmnist_root):
    out = tmp_path / "model.pt"
    result = export_student(kd_run, "torchscript", out=out)
    assert Path(result["path"]) == out and out.is_file()
    loaded = torch.jit.load(str(out))
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(loaded(x), _student(kd_run)(x), atol=1e-5, rtol=1e-5)
    side = json.loads((tmp_path / "model.pt.json").read_text())
    assert side == {k: v for k, v in result.items() if k not in ("path", "sidecar")}
    assert side["model"] == "resnet8" and side["kwargs"] == {"widths": [4, 8, 8]}
    assert (side["num_classes"], side["in_channels"], side["image_size"]) == (10, 1, 28)
    assert side["input_shape"] == ["batch", 1, 28, 28] and side["format"] == "torchscript"
    assert side["class_names"][0] == "T-shirt/top" and len(side["class_names"]) == 10
    # the normalisation is the training set's pixel statistics (computed here from the IDX file)
    mean, std = _pixel_stats(fmnist_root)
    assert side["normalization"]["mean"] == pytest.approx([mean], abs=1e-3)
    assert side["normalization"]["std"] == pytest.approx([std], abs=1e-3)
    assert side["check"]["max_abs_diff"] <= side["check"]["tolerance"]


def test_safetensors_round_trip(kd_run, tmp_path):
    st = pytest.importorskip("safetensors.torch")
    result = export_student(kd_run, "safetensors", out=tmp_path / "s.safetensors")
    tensors = st.load_file(result["path"])
    state = load_checkpoint(kd_run / "checkpoints" / "student.pt")["model"]
    assert set(tensors) == set(state)  # the student alone: no distiller / head / policy weights
    assert all(torch.equal(tensors[k], state[k]) for k in state)
    with open(result["path"], "rb") as f:  # header: 8-byte length, then JSON with __metadata__
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["__metadata__"]["adakd_model"] == "resnet8"
    assert json.loads(header["__metadata__"]["adakd_kwargs"]) == {"widths": [4, 8, 8]}
    assert result["check"]["max_abs_diff"] == 0.0


def test_onnx_round_trip(kd_run, tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the optional extra adakd[onnx]")
    pytest.importorskip("onnxscript", reason="ONNX export needs the optional extra adakd[onnx]")
    result = export_student(kd_run, "onnx", which="best")
    path = Path(result["path"])
    assert path == kd_run / "export" / "best.onnx" and Path(result["sidecar"]).name == "best.onnx.json"
    assert result["input_name"] == "input"
    try:
        import onnxruntime as ort
    except ImportError:
        assert result["check"]["max_abs_diff"] is None and "onnx.checker" in result["check"]["note"]
        return
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 1, 28, 28, generator=torch.Generator().manual_seed(9))  # a batch size never exported
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = _student(kd_run, "best.pt")(x).numpy()
    assert np.abs(got - ref).max() < 1e-4
    assert result["check"]["backend"].startswith("onnxruntime")


def test_default_paths_and_best(kd_run):
    result = export_student(kd_run, "torchscript", which="best")
    assert Path(result["path"]) == kd_run / "export" / "best.torchscript.pt"
    assert result["which"] == "best" and result["source_checkpoint"].endswith("best.pt")
    loaded = torch.jit.load(result["path"])
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(x), _student(kd_run, "best.pt")(x), atol=1e-5)
    # a checkpoint file as target: the export goes beside it
    result = export_student(kd_run / "checkpoints" / "student.pt", "torchscript")
    assert Path(result["path"]) == kd_run / "checkpoints" / "student.torchscript.pt"


# --------------------------------------------------------------------------- errors

def test_user_errors(kd_run, tmp_path):
    with pytest.raises(ConfigError, match="onnx, torchscript, safetensors"):
        export_student(kd_run, "tflite")
    with pytest.raises(CheckpointError, match="nowhere not found"):
        export_student(tmp_path / "nowhere", "torchscript")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(CheckpointError, match="finished run"):
        export_student(tmp_path / "empty-run", "torchscript")
    foreign = tmp_path / "foreign.pt"
    torch.save({"w": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="meta"):
        export_student(foreign, "torchscript")


@pytest.mark.parametrize("fmt, modules, extra", [("safetensors", ["safetensors", "safetensors.torch"], "safetensors"),
                                                  ("onnx", ["onnx", "onnxscript"], "onnx")])
def test_missing_optional_package(kd_run, tmp_path, monkeypatch, fmt, modules, extra):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # import -> ImportError
    with pytest.raises(AdakdError, match=rf"pip install -c constraints.txt 'adakd\[{extra}\]'"):
        export_student(kd_run, fmt, out=tmp_path / f"x.{fmt}")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_mismatch_leaves_nothing(kd_run, tmp_path, monkeypatch):
    monkeypatch.setitem(_CHECKERS, "torchscript", lambda path, x, ref, meta: CheckResult("fake", 1.0, 1e-5, 5))
    with pytest.raises(ExportMismatch, match="differ"):
        export_student(kd_run, "torchscript", out=tmp_path / "m.pt")
    assert not any(tmp_path.iterdir())


def test_cli_export(kd_run, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    assert main(["export", str(kd_run), "--format", "torchscript", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["path"] == str(out) and out.is_file()
    assert main(["export", str(tmp_path / "missing"), "--format", "torchscript"]) == 2
    assert "missing not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- compare plots

def _fake_run(path: Path, records: list[dict]) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_reference_export_is_read_the_reference_way_and_evaluates_the_same(kd_run, tmp_path, fmnist_root, capsys):
    """``--format reference`` writes ``{"model": sd}`` in RepDistiller/mdistiller's names; read back as they read a
    teacher (``torch.load(f)["model"]``, here weights-only), then evaluated by architecture (``adakd eval FILE
    --model --data``) it gives the run's own figures."""
    from adakd.api import evaluate_checkpoint
    from adakd.models.foreign import to_reference_state_dict

    out = tmp_path / "student.pth"
    assert main(["export", str(kd_run), "--format", "reference", "--out", str(out)]) == 0
    saved = torch.load(out, weights_only=True)["model"]
    student = _student(kd_run)
    expected = to_reference_state_dict(student)
    assert list(saved) == list(expected) and "layer1.0.conv1.weight" in saved and "conv1.weight" in saved
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    assert json.loads((tmp_path / "student.pth.json").read_text())["check"]["max_abs_diff"] == 0.0
    capsys.readouterr()

    data = {"name": "fashion_mnist", "root": str(fmnist_root), "test_subset": 200}
    ours = evaluate_checkpoint(kd_run)
    theirs = evaluate_checkpoint(out, model="resnet8", data=data, model_kwargs=TINY["kwargs"])
    assert (theirs["top1"], theirs["loss"], theirs["count"]) == (ours["top1"], ours["loss"], ours["count"])
    assert theirs["model"] == "resnet8" and theirs["checkpoint"] == str(out)


def test_cli_eval_of_a_foreign_file(tmp_path, fmnist_root, capsys):
    """A state dict without our metadata: --model/--data name it; without them one message says so."""
    from adakd.models.foreign import to_reference_state_dict

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, widths=[4, 8, 8])
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": {f"module.{k}": v for k, v in to_reference_state_dict(model).items()}, "epoch": 240}, path)
    assert main(["eval", str(path)]) == 2
    assert "--model NAME --data DATASET" in capsys.readouterr().err
    assert main(["eval", str(path), "--model", "resnet8"]) == 2
    assert "needs both --model NAME and --data DATASET" in capsys.readouterr().err
    argv = ["eval", str(path), "--model", "resnet8", "--data", "fashion_mnist", "--data-root", str(fmnist_root),
            "--model-kwargs", "{widths: [4, 8, 8]}", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 10_000 and result["dataset"] == "fashion_mnist" and 0 <= result["top1"] <= 100
    assert main(argv[:-1] + ["--format", "torchvision"]) == 2
    assert "no 'torchvision' weights layout" in capsys.readouterr().err


def test_compare_plot_writes_pngs(kd_run, tmp_path, capsys):
    other = _fake_run(tmp_path / "b" / "tiny-kd", [  # same name as kd_run: labels become parent/name
        {"kind": "epoch", "phase": "search", "epoch": 1, "phase_epoch": 1, "loss": 3.0},
        {"kind": "epoch", "phase": "train", "epoch": 2, "phase_epoch": 1, "loss": 2.0, "test_top1": 30.0,
         "test_loss": 2.1},
        {"kind": "epoch", "phase": "train", "epoch": 3, "phase_epoch": 2, "loss": 1.5, "test_top1": 40.0,
         "test_loss": 1.9}])
    paths = plot_compare([kd_run, other], tmp_path / "cmp")
    names = sorted(p.name for p in paths)
    assert names == ["compare.png", "compare_gradients.png"]  # kd_run recorded gradients
    for p in paths:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000
    assert main(["plot", str(kd_run), str(other), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "compare.png").is_file()
    with pytest.raises(AdakdError, match="not a run directory"):
        plot_compare([kd_run, tmp_path], tmp_path / "x")


# --------------------------------------------------------------------------- analyses

def test_logit_correlation_matches_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    assert np.allclose(logit_correlation(torch.tensor(z)), np.corrcoef(z, rowvar=False), atol=1e-12)
    zt = z + rng.normal(scale=0.5, size=z.shape)
    expected = np.abs(np.corrcoef(zt, rowvar=False) - np.corrcoef(z, rowvar=False))
    assert np.allclose(correlation_difference(z, zt), expected, atol=1e-12)
    const = z.copy()
    const[:, 2] = 1.5  # a constant class column: correlation 0 with the others, 1 with itself
    r = logit_correlation(const)
    assert r[2, 2] == 1.0 and np.all(r[2, [0, 1, 3, 4, 5]] == 0.0) and np.all(r[[0, 1, 3, 4, 5], 2] == 0.0)
    with pytest.raises(ConfigError):
        logit_correlation(np.zeros((1, 3)))


def test_gradient_recorder_by_hand():
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 3, 3)
            self.mid = torch.nn.Linear(48, 8)
            self.fc = torch.nn.Linear(8, 5)  # the classifier, as zoo models name it

        def forward(self, x):
            return self.fc(self.mid(torch.flatten(self.conv(x), 1)))

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    other = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)  # not the student's: ignored
    recorder = GradientMagnitudeRecorder(model)
    assert (recorder.first_name, recorder.last_name) == ("conv.weight", "fc.weight")
    expected = []
    try:
        for step in range(2):
            x = torch.randn(4, 1, 6, 6)
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            expected.append((np.abs(model.conv.weight.grad.numpy().astype(np.float64)).mean(),
                             np.abs(model.fc.weight.grad.numpy().astype(np.float64)).mean()))
            opt.step()
            other.param_groups[0]["params"][0].grad = torch.full((2,), 100.0)
            other.step()
        got = recorder.epoch_metrics()
        assert got["grad_first_layer"] == pytest.approx(np.mean([e[0] for e in expected]), rel=1e-5)
        assert got["grad_last_layer"] == pytest.approx(np.mean([e[1] for e in expected]), rel=1e-5)
        assert recorder.epoch_metrics() == {}  # reset after each epoch
    finally:
        recorder.close()
    opt.step()
    assert recorder.epoch_metrics() == {}  # the hook is gone


def test_run_records_gradients_and_plots_them(kd_run):
    records = [json.loads(line) for line in (kd_run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all(r["grad_first_layer"] > 0 and r["grad_last_layer"] > 0 for r in records)
    layers = json.loads((kd_run / "analysis" / "grad_layers.json").read_text())
    assert layers["grad_last_layer"] == "fc.weight"


def test_logit_correlation_of_a_run(kd_run, fmnist_root, monkeypatch):
    from adakd.strategies.standard import StandardStrategy

    monkeypatch.setattr(StandardStrategy, "block_logits", classmethod(
        lambda cls, state, options, student, num_classes: lambda x: [student(x) * 2.0 + 1.0, student(x).flip(1)]))
    result = compute_logit_correlation(kd_run, device="cpu")
    with np.load(result["path"]) as saved:
        arrays = {k: saved[k] for k in saved.files}
    assert sorted(arrays) == ["block_1", "block_2", "final"]
    # independently: logits of both models on the run's test split, then numpy's corrcoef
    data = build_data(DataConfig(name="fashion_mnist", root=str(fmnist_root), test_subset=200, eval_batch_size=200),
                      "cpu", seed=0)
    teacher = build_model(TINY["name"], num_classes=10, in_channels=1, image_size=28, **TINY["kwargs"])
    teacher.load_state_dict(load_checkpoint(kd_run.parent.parent / "teacher.pt")["model"])
    student = _student(kd_run)
    with torch.no_grad():
        zs = torch.cat([student(b.x) for b in data.test]).double().numpy()
        zt = torch.cat([teacher.eval()(b.x) for b in data.test]).double().numpy()
    rt = np.corrcoef(zt, rowvar=False)
    assert result["samples"] == 200
    assert np.allclose(arrays["final"], np.abs(rt - np.corrcoef(zs, rowvar=False)), atol=1e-6)
    assert np.allclose(arrays["block_1"], arrays["final"], atol=1e-6)  # an affine map keeps correlations
    assert np.allclose(arrays["block_2"], np.abs(rt - np.corrcoef(zs[:, ::-1], rowvar=False)), atol=1e-6)
    assert result["mean_final"] == pytest.approx(arrays["final"].mean())
    (kd_run / "analysis" / "logit_correlation.npz").unlink()
    assert main(["plot", str(kd_run), "--analysis", "--device", "cpu", "--out", str(kd_run / "p")]) == 0
    written = {p.name for p in (kd_run / "p").iterdir()}
    assert {"curves.png", "gradients.png", "logit_correlation.png"} <= written
    assert (kd_run / "p" / "logit_correlation.png").read_bytes()[:8] == PNG
    assert {p.name for p in plot_run(kd_run, kd_run / "q")} == written


def test_logit_correlation_needs_a_teacher(tmp_path):
    run = _fake_run(tmp_path / "plain", [{"kind": "epoch", "epoch": 1}])
    (run / "config.yaml").write_text("name: plain\ndata: {name: fashion_mnist}\nstudent: {name: resnet8}\n")
    with pytest.raises(AdakdError, match="no teacher"):
        compute_logit_correlation(run)
