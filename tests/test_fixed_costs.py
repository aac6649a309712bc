"""What a short run pays besides its training steps (issue 26, item 3): the teacher's test accuracy cached per
weights (engine/teacher_score.py), evaluation every k epochs (train.eval_every), the per-phase wall time in
summary.json (time_s), and the fast-path probe keyed so that a sweep's runs share it and a cached-teacher
run times its own step (engine/probe.py)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from adakd.config import validate
from adakd.data.loader import Batch
from adakd.engine import probe, teacher_score
from adakd.engine.checkpoint import load_checkpoint
from adakd.engine.trainer import train
from adakd.models import build_model
from adakd.models.contract import ContractModel
from adakd.runtime import distributed as ddp
from adakd.runtime.phase_clock import PhaseClock, process_start_time
from adakd.runtime.timing import Candidate

from tiny_runs import Killed, apply_dotted, kill_after_steps

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


# ------------------------------------------------------------------ the teacher's test accuracy, cached
class _Loader:
    """A test loader of fixed batches (what evaluate() iterates) with the row count the key reads."""

    def __init__(self, n: int = 40) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)
        self.num_rows = n

    def __iter__(self):
        for i in range(0, self.num_rows, 16):
            yield Batch(self.x[i:i + 16], self.y[i:i + 16], torch.arange(i, min(i + 16, self.num_rows)))


def _score_setup(**teacher):
    cfg = validate({"data": {"name": "fashion_mnist"}, "student": {"name": "resnet8"},
                    "teacher": {"name": "resnet8", "kwargs": {"widths": [4, 8, 8]}, "checkpoint": "t.pt", **teacher},
                    "losses": {"kd": {}}})
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1, image_size=16, widths=[4, 8, 8]).eval()
    data = SimpleNamespace(info=SimpleNamespace(image_size=16, mean=(0.5,), std=(0.25,)), test=_Loader())
    return cfg, model, data


def _counting_evaluate(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = teacher_score.evaluate

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_score, "evaluate", counted)
    return calls


def test_teacher_accuracy_is_evaluated_once_per_weights_then_read(monkeypatch):
    cfg, model, data = _score_setup()
    calls = _counting_evaluate(monkeypatch)
    first, cached = teacher_score.teacher_test_top1(cfg, model, data, CPU, "fp32", False, ddp.SINGLE)
    assert not cached and len(calls) == 1
    key = teacher_score.score_key(cfg, model, data, CPU, "fp32", False)
    stored = json.loads(teacher_score.score_path(key).read_text())
    assert stored["top1"] == first and stored["count"] == 40 and stored["key"]["test"]["images"] == 40
    assert teacher_score.score_path(key).parent == teacher_score.score_dir()
    again, cached = teacher_score.teacher_test_top1(cfg, model, data, CPU, "fp32", False, ddp.SINGLE)
    assert cached and again == first and len(calls) == 1  # read, not evaluated
    # other weights: a miss (evaluated), and the first entry is still there
    with torch.no_grad():
        model.fc.weight.mul_(-1.0)
    other, cached = teacher_score.teacher_test_top1(cfg, model, data, CPU, "fp32", False, ddp.SINGLE)
    assert not cached and len(calls) == 2 and teacher_score.score_path(key).is_file()
    assert teacher_score.score_key(cfg, model, data, CPU, "fp32", False)["weights_sha256"] != key["weights_sha256"]


def test_teacher_accuracy_key_names_what_the_number_depends_on():
    cfg, model, data = _score_setup()
    base = teacher_score.score_key(cfg, model, data, CPU, "fp32", False)
    assert teacher_score.score_key(cfg, model, data, CPU, "fp32", False) == base
    variants = [teacher_score.score_key(cfg, model, data, CPU, "bf16", False),
                teacher_score.score_key(cfg, model, data, CPU, "fp32", True),
                teacher_score.score_key(cfg.model_copy(update={"data": cfg.data.model_copy(update={"test_subset": 20})}),
                                        model, data, CPU, "fp32", False),
                teacher_score.score_key(cfg, model, SimpleNamespace(info=SimpleNamespace(
                    image_size=16, mean=(0.4,), std=(0.25,)), test=data.test), CPU, "fp32", False)]
    paths = {teacher_score.score_path(k) for k in [base, *variants]}
    assert len(paths) == 5
    # what does not change the test split: the run's seed, batch size, train subset, the teacher's cache setting
    same = cfg.model_copy(update={"seed": 7, "data": cfg.data.model_copy(update={"batch_size": 3, "train_subset": 99}),
                                  "teacher": cfg.teacher.model_copy(update={"cache": "auto"})})
    assert teacher_score.score_key(same, model, data, CPU, "fp32", False) == base


@pytest.mark.parametrize("content", ["{not json", '{"key": {}, "top1": 99.0}', '{"top1": "x"}', ""])
def test_a_corrupt_or_foreign_accuracy_file_is_ignored_and_rewritten(monkeypatch, content):
    cfg, model, data = _score_setup()
    key = teacher_score.score_key(cfg, model, data, CPU, "fp32", False)
    path = teacher_score.score_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    calls = _counting_evaluate(monkeypatch)
    top1, cached = teacher_score.teacher_test_top1(cfg, model, data, CPU, "fp32", False, ddp.SINGLE)
    assert not cached and len(calls) == 1 and top1 != 99.0
    assert json.loads(path.read_text())["top1"] == top1  # rewritten with the evaluated number
    assert teacher_score.teacher_test_top1(cfg, model, data, CPU, "fp32", False, ddp.SINGLE) == (top1, True)


# ------------------------------------------------------------------ tiny real runs
TINY_MODEL = {"name": "resnet8", "kwargs": {"widths": [4, 8, 8]}}


def tiny_config(tmp_path: Path, root: Path, **updates) -> dict:
    cfg = {"name": "tiny", "seed": 0, "device": "cpu", "output_dir": str(tmp_path / "runs"), "progress": False,
           "data": {"name": "fashion_mnist", "root": str(root), "batch_size": 32, "eval_batch_size": 500,
                    "train_subset": 128, "test_subset": 300},
           "student": TINY_MODEL,
           "train": {"epochs": 2, "precision": "fp32", "channels_last": False,
                     "optimizer": {"lr": 0.05}, "schedule": {"name": "cosine"}}}
    return apply_dotted(cfg, updates)


def run(tmp_path, root, log=None, **updates):
    return train(validate(tiny_config(tmp_path, root, **updates)), log=log or (lambda m: None))


def metrics(summary) -> list[dict]:
    return [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


def test_a_run_reads_its_teachers_accuracy_from_the_cache_the_second_time(tmp_path, fmnist_root):
    teacher_run = run(tmp_path / "t", fmnist_root, name="teacher", **{"train.epochs": 1})
    kd = {"teacher": {**TINY_MODEL, "checkpoint": teacher_run["run_dir"]}, "losses": {"kd": {}}}
    first_log: list[str] = []
    first = run(tmp_path / "a", fmnist_root, log=first_log.append, **kd, **{"train.epochs": 1})
    second_log: list[str] = []
    second = run(tmp_path / "b", fmnist_root, log=second_log.append, seed=1, **kd, **{"train.epochs": 1})
    assert first["teacher_top1"] == second["teacher_top1"] and 0.0 <= first["teacher_top1"] <= 100.0
    assert not any("cached for these weights" in m for m in first_log)
    assert any(m.endswith("(cached for these weights)") for m in second_log), second_log


def test_summary_breaks_the_wall_time_down_by_phase(tmp_path, fmnist_root):
    lines: list[str] = []
    summary = run(tmp_path, fmnist_root, log=lines.append)
    t = summary["time_s"]
    for key in ("startup", "setup", "probe", "train_steps", "eval", "checkpoint", "other", "total", "fixed_share"):
        assert key in t, key
    assert t["train_steps"] == pytest.approx(summary["train_seconds"], abs=0.01)
    parts = sum(v for k, v in t.items() if k not in ("total", "fixed_share"))
    assert parts == pytest.approx(t["total"], abs=0.01)  # the phases add up to the whole, "other" the rest
    assert all(v >= 0 for v in t.values()) and t["eval"] > 0 and t["checkpoint"] > 0
    # time_s holds seconds rounded to 1e-3 and the share (from the unrounded seconds) rounded to 1e-4: recomputed
    # from the rounded seconds it can differ by up to 5e-4 * (1 + train/total) / total + 5e-5 <= 1e-3 / total + 5e-5
    assert t["fixed_share"] == pytest.approx(1 - t["train_steps"] / t["total"], abs=1e-3 / t["total"] + 5e-5)
    assert json.loads((Path(summary["run_dir"]) / "summary.json").read_text())["time_s"] == t
    assert lines[-1].startswith(f"wall time {t['total']:.1f} s, {100 * t['fixed_share']:.1f}% outside the training "
                                f"steps: startup {t['startup']:.1f}, setup {t['setup']:.1f}")


def test_phase_clock_subtracts_nested_phases_and_knows_the_process_start():
    import time

    now = [0.0]
    clock = PhaseClock(clock=lambda: now[0])
    with clock.phase("setup"):
        now[0] += 2.0
        with clock.phase("probe"):
            now[0] += 5.0
        now[0] += 1.0
    with clock.phase("probe"):
        now[0] += 0.5
    assert clock.seconds == {"probe": 5.5, "setup": 3.0}
    assert 0 < time.time() - process_start_time() < 24 * 3600  # this test's process started before it


def test_eval_every_evaluates_every_kth_and_the_last_epoch_and_picks_best_among_them(tmp_path, fmnist_root):
    summary = run(tmp_path, fmnist_root, **{"train.epochs": 5, "train.eval_every": 2})
    lines = metrics(summary)
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5]
    assert [r["epoch"] for r in lines if "test_top1" in r] == [2, 4, 5]
    assert all(not any(k.startswith("test_") for k in r) for r in lines if r["epoch"] in (1, 3))
    evaluated = {r["epoch"]: r["test_top1"] for r in lines if "test_top1" in r}
    best_epoch = max(evaluated, key=lambda e: (evaluated[e], -e))  # the first of equals is kept
    assert (summary["best_epoch"], summary["best_top1"]) == (best_epoch, evaluated[best_epoch])
    assert summary["last_top1"] == evaluated[5]
    best = load_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "best.pt")
    assert (best["epoch"], best["top1"]) == (best_epoch, evaluated[best_epoch])
    # eval_every=1 (the default) is the run it always was: the same weights, every epoch evaluated
    every = run(tmp_path / "every", fmnist_root, **{"train.epochs": 5})
    sparse = load_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "student.pt")["model"]
    dense = load_checkpoint(Path(every["run_dir"]) / "checkpoints" / "student.pt")["model"]
    assert all(torch.equal(sparse[k], dense[k]) for k in dense)  # evaluation does not touch training
    assert [r["epoch"] for r in metrics(every) if "test_top1" in r] == [1, 2, 3, 4, 5]


def test_plots_and_report_cope_with_epochs_without_test_fields(tmp_path, fmnist_root):
    pytest.importorskip("matplotlib")
    from adakd.tools.report.compare_plots import plot_compare
    from adakd.tools.report.curves import plot_curves
    from adakd.tools.report.table import build_report

    summary = run(tmp_path, fmnist_root, **{"train.epochs": 3, "train.eval_every": 2})
    d = Path(summary["run_dir"])
    assert [p.name for p in plot_curves(d, tmp_path / "plots")] == ["curves.png"]
    assert [p.name for p in plot_compare([d], tmp_path / "compare")] == ["compare.png"]
    markdown, files = build_report(tmp_path / "runs", out=tmp_path / "report")
    assert [f.name for f in files] == ["results.md", "results.csv"]
    assert f"{summary['best_top1']:.2f}" in markdown and f"{summary['last_top1']:.2f}" in markdown


def test_resume_mid_run_with_eval_every_matches_the_uninterrupted_run(tmp_path, fmnist_root, monkeypatch):
    updates = {"train.epochs": 4, "train.eval_every": 3}
    straight = run(tmp_path / "straight", fmnist_root, **updates)
    cfg = validate(tiny_config(tmp_path / "killed", fmnist_root, **updates))
    restore = kill_after_steps(monkeypatch, 2, lambda phase, call: call == 3)  # inside epoch 3 (an evaluated one)
    with pytest.raises(Killed):
        train(cfg, log=lambda m: None)
    restore()
    resumed = train(cfg.model_copy(update={"resume": True}), log=lambda m: None)
    a = load_checkpoint(Path(straight["run_dir"]) / "checkpoints" / "student.pt")["model"]
    b = load_checkpoint(Path(resumed["run_dir"]) / "checkpoints" / "student.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if "seconds" not in k} for r in rs]  # noqa: E731
    assert strip(metrics(resumed)) == strip(metrics(straight))
    assert [r["epoch"] for r in metrics(resumed) if "test_top1" in r] == [3, 4]
    assert (resumed["best_epoch"], resumed["best_top1"]) == (straight["best_epoch"], straight["best_top1"])


# ------------------------------------------------------------------ the probe: shared by a sweep, keyed by the step
def _probe_config(cache: str = "off", losses=None, **top):
    return validate({"data": {"name": "fashion_mnist", "batch_size": 8},
                     "student": {"name": "resnet8", "kwargs": {"widths": [4, 8, 8]}},
                     "teacher": {"name": "resnet8", "kwargs": {"widths": [8, 8, 16]}, "checkpoint": "t.pt",
                                 "cache": cache},
                     "losses": losses or {"kd": {}}, "train": {"epochs": 1}, **top})


def test_probe_key_is_shared_across_seeds_and_names_but_tells_a_cached_teacher_from_a_live_one():
    shape = (1, 28, 28)
    live = probe.run_key(_probe_config(), CPU, shape)
    assert probe.run_key(_probe_config(seed=3, name="other"), CPU, shape) == live
    cached = probe.run_key(_probe_config("auto"), CPU, shape)
    assert cached != live and cached["teacher_outputs"] == "cache" and "teacher_outputs" not in live
    assert probe.run_key(_probe_config("/some/built/cache"), CPU, shape) == cached  # where it lives: the same step


def test_the_sweeps_runs_of_one_method_share_one_probe():
    from adakd.tools.sweep import load_sweep

    sweep = load_sweep(REPO / "studies" / "fmnist-methods" / "sweep.yaml")
    kd = [r.validated() for r in sweep.runs if r.labels == {"method": "kd", "strategy": "standard"}]
    dkd = [r.validated() for r in sweep.runs if r.labels == {"method": "dkd", "strategy": "standard"}]
    assert len(kd) == 3 and {c.seed for c in kd} == {0, 1, 2}
    keys = [probe.run_key(c, CPU, (1, 28, 28)) for c in kd]
    assert keys[0] == keys[1] == keys[2] != probe.run_key(dkd[0], CPU, (1, 28, 28))


class _CountingForward:
    """Counts the teacher's forwards (told apart from the student's by its width): ContractModel.forward_features,
    patched on the class (the probe steps copies of the models)."""

    def __init__(self, monkeypatch, teacher: ContractModel) -> None:
        self.calls = 0
        real = ContractModel.forward_features

        def counted(model, *args, **kwargs):
            if model.fc.in_features == teacher.fc.in_features:
                self.calls += 1
            return real(model, *args, **kwargs)

        monkeypatch.setattr(ContractModel, "forward_features", counted)


@pytest.mark.parametrize("cache, losses, forwards_per_step", [
    ("off", {"kd": {}}, 1),             # the live teacher: one forward per step
    ("auto", {"kd": {}}, 0),            # KD reads logits: the cached step runs no teacher
    ("auto", {"kd": {}, "at": {}}, 1),  # AT reads feature maps: the run (and so the probe) uses the live teacher
])
def test_the_probe_times_the_step_the_run_will_take(monkeypatch, cache, losses, forwards_per_step):
    cfg = _probe_config(cache, losses)
    torch.manual_seed(0)
    student = build_model("resnet8", num_classes=10, in_channels=1, image_size=16, widths=[4, 8, 8])
    teacher = build_model("resnet8", num_classes=10, in_channels=1, image_size=16, widths=[8, 8, 16]).eval()
    counter = _CountingForward(monkeypatch, teacher)
    build = probe.strategy_step_builder(cfg, student, teacher, CPU, num_classes=10, image_shape=(1, 16, 16),
                                        num_train=100, steps_per_epoch=10)
    step = build(Candidate("fp32", False))
    before = counter.calls  # building: the distiller's shape probe (and the cached step's outputs, once)
    for _ in range(3):
        step()
    assert counter.calls - before == 3 * forwards_per_step
