"""``adakd sweep`` and ``adakd report``: grid expansion (names, merged configs, seeds, relative paths),
skip-finished / resume logic (with a stand-in trainer), report statistics against hand-computed
mean/std on synthetic summary.json files, and the published-number lookup."""
from __future__ import annotations

import csv
import io
import json
import statistics
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from adakd.cli import main
from adakd.errors import ConfigError
from adakd.tools.report.published import PAIRS, lookup
from adakd.tools.report.table import build_report, collect, group, to_csv
from adakd.tools.sweep import RUN_CONFIG, RUN_META, load_sweep, run_sweep

STUDENT = {
    "name": "tiny-student", "device": "cpu", "progress": False,
    "data": {"name": "fashion_mnist", "batch_size": 32, "train_subset": 256},
    "student": {"name": "resnet8", "kwargs": {"widths": [8, 16, 16]}},
    "train": {"epochs": 3, "precision": "fp32"},
}
TEACHER = {"name": "tiny-teacher", "data": {"name": "fashion_mnist"}, "student": {"name": "resnet14"},
           "train": {"epochs": 1}}


def write_yaml(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def project(tmp_path):
    """configs/{student,teacher,at}.yaml and sweeps/ in a temporary tree."""
    write_yaml(tmp_path / "configs" / "student.yaml", STUDENT)
    write_yaml(tmp_path / "configs" / "teacher.yaml", TEACHER)
    write_yaml(tmp_path / "configs" / "at.yaml", {"base": "student.yaml", "teacher": {"name": "resnet14",
               "recipe": "teacher.yaml"}, "losses": {"at": {"weight": 500.0}}})
    return tmp_path


def sweep_file(project: Path, body: str) -> Path:
    path = project / "sweeps" / "s.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))
    return path


BASIC = """
    name: demo
    base: ../configs/student.yaml
    output_dir: ../results/demo/runs
    seeds: [0, 1]
    overrides: ["train.epochs=1", "data.batch_size=16"]
    grid:
      method:
        scratch: {}
        kd: {teacher: {name: resnet14, recipe: ../configs/teacher.yaml}, losses: {kd: {temperature: 2}}, ce_weight: 0.1}
        at: {base: "../configs/{method}.yaml", data: {root: ../data}}
      strategy:
        standard: {}
        other: {strategy: {options: {}}, train: {epochs: 9}}
    exclude: [{method: [kd, at], strategy: other}]
"""


# ------------------------------------------------------------------ expansion
def test_expansion_names_seeds_and_merged_configs(project):
    sweep = load_sweep(sweep_file(project, BASIC))
    out = (project / "results" / "demo" / "runs").resolve()
    assert sweep.name == "demo" and sweep.output_dir == out
    names = [r.name for r in sweep.runs]
    assert names == ["demo-scratch-standard-s0", "demo-scratch-other-s0", "demo-kd-standard-s0",
                     "demo-at-standard-s0", "demo-scratch-standard-s1", "demo-scratch-other-s1",
                     "demo-kd-standard-s1", "demo-at-standard-s1"]  # seed-major
    by_name = {r.name: r for r in sweep.runs}
    kd = by_name["demo-kd-standard-s1"]
    assert kd.labels == {"method": "kd", "strategy": "standard"} and kd.seed == 1
    assert kd.run_dir == out / "demo-kd-standard-s1"
    cfg = kd.validated()
    assert (cfg.name, cfg.seed, cfg.run_dir) == ("demo-kd-standard-s1", 1, str(out / "demo-kd-standard-s1"))
    assert cfg.train.epochs == 1 and cfg.data.batch_size == 16  # overrides, applied last
    assert cfg.student.kwargs == {"widths": [8, 16, 16]} and cfg.data.train_subset == 256  # from base
    assert cfg.ce_weight == 0.1 and cfg.losses == {"kd": {"temperature": 2}}
    assert cfg.teacher.recipe == str((project / "configs" / "teacher.yaml").resolve())  # relative to the sweep file
    scratch = by_name["demo-scratch-other-s0"].validated()
    assert scratch.teacher is None and scratch.losses == {} and scratch.ce_weight == 1.0
    assert scratch.train.epochs == 1  # the fragment said 9, the sweep override wins
    at = by_name["demo-at-standard-s0"].validated()  # fragment base with the {method} template
    assert at.losses == {"at": {"weight": 500.0}} and at.teacher.name == "resnet14"
    assert at.teacher.recipe == str((project / "configs" / "teacher.yaml").resolve())  # relative to at.yaml
    assert at.data.root == str((project / "data").resolve())


@pytest.mark.parametrize("body,match", [
    ("name: x\nbogus: 1\n", "unknown sweep key"),
    ("base: a.yaml\n", "`name` is required"),
    ("name: x\nseeds: [0, 0]\n", "repeats"),
    ("name: x\nseeds: 3\n", "seeds"),
    ("name: x\ngrid: {method: []}\n", "grid axis 'method'"),
    ("name: x\ngrid: {method: {'a b': {}}}\n", "grid label"),
    ("name: x\ngrid: {m: {a: {}}}\nexclude: [{n: a}]\n", "not in the grid"),
    ("name: x\nbase: ../configs/student.yaml\ngrid: {m: {a: {base: '{pair}.yaml'}}}\n", "unknown axis"),
    ("name: x\nbase: ../configs/student.yaml\ngrid: {m: {a: {train: {epochs: 0}}}}\n", "train.epochs"),
    ("name: x\nbase: ../configs/student.yaml\ngrid: {m: {a: {}}}\nexclude: [{m: a}]\n", "no run"),
])
def test_bad_sweep_files_name_the_fix(project, body, match):
    with pytest.raises(ConfigError, match=match):
        load_sweep(sweep_file(project, body))


# ------------------------------------------------------------------ running: skip / resume / fail
FAKE_TRAINER = """
import json, sys, yaml
from pathlib import Path
cfg = yaml.safe_load(Path(sys.argv[1]).read_text())
run_dir = Path(cfg["run_dir"])
log = Path(sys.argv[2])
with open(log, "a") as f:
    f.write(json.dumps({"name": cfg["name"], "resume": cfg["resume"], "seed": cfg["seed"]}) + "\\n")
if cfg.get("ce_weight") == 0.5:
    print("adakd: error: the stand-in failed on purpose", file=sys.stderr)
    sys.exit(2)
(run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
(run_dir / "checkpoints" / "student.pt").write_text("weights")
(run_dir / "summary.json").write_text(json.dumps({"best_top1": 80.0 + cfg["seed"], "last_top1": 79.0,
    "train_seconds": 1.0, "student": "resnet8", "teacher": None, "losses": [], "strategy": "standard",
    "seed": cfg["seed"]}))
"""


def finished(run_dir: Path, best: float) -> None:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "student.pt").write_text("w")
    (run_dir / "summary.json").write_text(json.dumps({"best_top1": best, "last_top1": best, "train_seconds": 2.0}))


def test_runner_states_and_progress_lines(project, tmp_path):
    path = sweep_file(project, """
        name: demo
        base: ../configs/student.yaml
        output_dir: ../runs
        seeds: [0, 1, 2]
        grid:
          method:
            ok: {}
            bad: {ce_weight: 0.5}
    """)
    sweep = load_sweep(path)
    by_name = {r.name: r for r in sweep.runs}
    finished(by_name["demo-ok-s0"].run_dir, 91.5)
    killed = by_name["demo-ok-s1"].run_dir
    (killed / "checkpoints").mkdir(parents=True)
    (killed / "checkpoints" / "last.pt").write_text("state")
    calls = tmp_path / "calls.jsonl"
    script = tmp_path / "fake.py"
    script.write_text(FAKE_TRAINER.replace("Path(sys.argv[2])", f"Path({str(calls)!r})"))
    lines: list[str] = []
    outcomes = run_sweep(sweep, parallel=2, log=lines.append, command=[sys.executable, str(script)])

    status = {o.name: o.status for o in outcomes}
    assert status == {"demo-ok-s0": "skipped", "demo-ok-s1": "done", "demo-ok-s2": "done",
                      "demo-bad-s0": "failed", "demo-bad-s1": "failed", "demo-bad-s2": "failed"}
    called = [json.loads(x) for x in calls.read_text().splitlines()]
    assert sorted(c["name"] for c in called) == sorted(n for n in status if n != "demo-ok-s0")
    assert all(c["resume"] is True for c in called)  # every started run may continue from a checkpoint
    ok2 = next(o for o in outcomes if o.name == "demo-ok-s2")
    assert (ok2.best_top1, ok2.last_top1) == (82.0, 79.0)
    assert next(o for o in outcomes if o.name == "demo-ok-s0").best_top1 == 91.5
    assert next(o for o in outcomes if o.name == "demo-bad-s0").returncode == 2
    # one line per start and per finish
    assert any("skip" in x and "demo-ok-s0" in x for x in lines)
    assert any("resume" in x and "demo-ok-s1" in x for x in lines)
    assert any("done" in x and "demo-ok-s2" in x and "best 82.00%" in x for x in lines)
    assert any("FAILED" in x and "failed on purpose" in x for x in lines)
    assert sum(x.split()[1] in ("start", "resume") for x in lines) == 5
    meta = json.loads((by_name["demo-ok-s2"].run_dir / RUN_META).read_text())
    assert meta == {"sweep": "demo", "run": "demo-ok-s2", "labels": {"method": "ok"}, "seed": 2}
    assert yaml.safe_load((by_name["demo-ok-s2"].run_dir / RUN_CONFIG).read_text())["resume"] is True

    calls.unlink()  # run again: only the failed ones start
    outcomes = run_sweep(sweep, parallel=1, log=lambda m: None, command=[sys.executable, str(script)])
    assert sorted(json.loads(x)["name"] for x in calls.read_text().splitlines()) == [
        "demo-bad-s0", "demo-bad-s1", "demo-bad-s2"]
    assert sum(o.status == "skipped" for o in outcomes) == 3


def test_cli_sweep_dry_run_lists_runs(project, capsys):
    path = sweep_file(project, BASIC)
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 runs" in out and "demo-kd-standard-s0" in out and "resnet14 -> resnet8" in out
    assert not (project / "results").exists()  # a dry run writes nothing


# ------------------------------------------------------------------ report
def fake_run(root: Path, name: str, *, best: float, last: float, seconds: float, seed: int, teacher: str | None,
             student: str, losses: list[str], strategy: str = "standard", dataset: str = "fashion_mnist",
             labels: dict | None = None, teacher_top1: float | None = None, extra: dict | None = None) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({
        "name": name, "student": student, "teacher": teacher, "losses": losses, "strategy": strategy,
        "seed": seed, "best_top1": best, "last_top1": last, "train_seconds": seconds, "teacher_top1": teacher_top1,
        **(extra or {})}))
    (d / "config.yaml").write_text(yaml.safe_dump({"data": {"name": dataset}}))
    if labels is not None:
        (d / "sweep.json").write_text(json.dumps({"sweep": "x", "run": name, "labels": labels, "seed": seed}))


def hand(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def test_report_statistics_gains_and_published(tmp_path):
    root = tmp_path / "runs"
    kd_best, kd_last = [70.10, 71.30, 69.80], [69.90, 71.00, 69.50]
    sc_best, sc_last = [68.00, 69.10], [67.70, 68.80]
    sakd_best, sakd_last = [71.20, 72.40], [71.00, 72.00]
    for i, (b, l) in enumerate(zip(kd_best, kd_last)):
        fake_run(root, f"kd-s{i}", best=b, last=l, seconds=100 + i, seed=i, teacher="resnet56", student="resnet20",
                 losses=["kd"], dataset="cifar100", labels={"method": "kd", "strategy": "standard"}, teacher_top1=72.0)
    for i, (b, l) in enumerate(zip(sc_best, sc_last)):
        fake_run(root, f"scratch-s{i}", best=b, last=l, seconds=50, seed=i, teacher=None, student="resnet20",
                 losses=[], dataset="cifar100", labels={"method": "scratch", "strategy": "standard"})
    for i, (b, l) in enumerate(zip(sakd_best, sakd_last)):
        fake_run(root, f"kd-sakd-s{i}", best=b, last=l, seconds=130, seed=i, teacher="resnet56", student="resnet20",
                 losses=["kd"], strategy="sakd", dataset="cifar100", labels={"method": "kd", "strategy": "sakd"})
    fake_run(root, "sp-abl-s0", best=70.5, last=70.2, seconds=10, seed=0, teacher="resnet56", student="resnet20",
             losses=["sp"], strategy="abl", dataset="cifar100")  # no sweep labels: method from the losses
    (root / "unfinished").mkdir()
    (root / "unfinished" / "config.yaml").write_text("{}")

    records, unfinished = collect(root)
    assert len(records) == 8 and unfinished == [root / "unfinished"]
    rows = {(r.method, r.strategy): r for r in group(records)}
    kd = rows[("kd", "standard")]
    assert kd.n == 3 and kd.seeds == [0, 1, 2]
    for stats, values in ((kd.best, kd_best), (kd.last, kd_last)):
        mean, std = hand(values)
        assert stats.mean == pytest.approx(mean, abs=1e-12) and stats.std == pytest.approx(std, abs=1e-12)
    assert kd.train_seconds.mean == pytest.approx(101.0)
    assert kd.gain_scratch == pytest.approx((hand(kd_best)[0] - hand(sc_best)[0], hand(kd_last)[0] - hand(sc_last)[0]))
    assert kd.gain_standard is None
    assert kd.published.top1 == 70.66 and "last epoch" in kd.published.source
    sakd = rows[("kd", "sakd")]
    assert sakd.gain_standard == pytest.approx((hand(sakd_best)[0] - hand(kd_best)[0],
                                                hand(sakd_last)[0] - hand(kd_last)[0]))
    assert sakd.time_vs_standard == pytest.approx(130 / 101) and kd.time_vs_standard is None
    assert sakd.published is None  # no published SAKD numbers for this pair
    scratch = rows[("scratch", "standard")]
    assert scratch.gain_scratch is None and scratch.published.top1 == 69.06
    abl = rows[("sp", "abl")]
    assert abl.best.std is None and abl.published.top1 == 71.06  # ABL Table 8, adaptive
    assert abl.gain_standard is None  # no standard SP run in this folder

    table = list(csv.DictReader(io.StringIO(to_csv(list(rows.values())))))
    kd_row = next(r for r in table if r["method"] == "kd" and r["strategy"] == "standard")
    assert float(kd_row["best_top1_mean"]) == pytest.approx(hand(kd_best)[0], abs=1e-4)
    assert float(kd_row["last_top1_std"]) == pytest.approx(hand(kd_last)[1], abs=1e-4)
    assert kd_row["n"] == "3" and kd_row["seeds"] == "0 1 2" and kd_row["published_top1"] == "70.6600"
    assert float(kd_row["teacher_top1_mean"]) == 72.0

    markdown, files = build_report(root, tmp_path / "out")
    assert [f.name for f in files] == ["results.md", "results.csv"] and all(f.is_file() for f in files)
    mean, std = hand(kd_best)
    assert f"{mean:.2f} ± {std:.2f}" in markdown
    assert "best epoch" in markdown and "last epoch" in markdown
    assert "1 run(s) without summary.json" in markdown


def test_report_of_a_sweep_file_through_the_cli(project, capsys):
    path = sweep_file(project, """
        name: demo
        base: ../configs/student.yaml
        output_dir: ../results/demo/runs
        seeds: [0, 1]
        grid: {method: {scratch: {}}}
    """)
    sweep = load_sweep(path)
    for run, best in zip(sweep.runs, [90.0, 92.0]):
        fake_run(sweep.output_dir, run.name, best=best, last=best - 1, seconds=1, seed=run.seed, teacher=None,
                 student="resnet8", losses=[], labels=run.labels)
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"91.00 ± {statistics.stdev([90.0, 92.0]):.2f}" in out
    assert (project / "results" / "demo" / "results.csv").is_file()  # beside the runs folder
    assert main(["report", str(project / "nowhere")]) == 2


# ------------------------------------------------------------------ published numbers
def test_published_lookup():
    assert lookup("cifar100", "resnet32x4", "resnet8x4", "dkd").top1 == 76.32
    assert lookup("cifar100", "resnet32x4", "resnet8x4", "kd").top1 == 73.33
    assert lookup("cifar100", "ResNet50", "MobileNetV2", "crd").top1 == 69.11
    assert lookup("cifar100", "wrn_40_2", "ShuffleV1", "kd").top1 == 74.83
    assert lookup("cifar100", "vgg13", "vgg8", "reviewkd") is None  # "-" in the table
    assert lookup("cifar100", "wrn_40_2", "wrn_40_1", "reviewkd").top1 == 75.09
    assert lookup("cifar100", "resnet110", "resnet32", "vid", "abl").top1 == 72.85
    assert lookup("cifar100", "resnet110", "resnet32", "vid").top1 == 72.61
    assert lookup("cifar100", None, "MobileNetV2", "scratch").top1 == 64.60
    assert lookup("cifar100", None, "resnet32x4", "teacher").top1 == 79.42
    assert lookup("fashion_mnist", "resnet56", "resnet20", "kd") is None
    assert lookup("cifar100", "resnet56", "resnet20", "crd_kd") is None
    assert len(PAIRS) == 13


def test_report_sections_for_abl_gammas_and_sakd_routing(tmp_path):
    root = tmp_path / "runs"
    shares = [[0.70, 0.40], [0.60, 0.50]]  # teacher share per block, two seeds
    for i, g2 in enumerate(shares):
        fake_run(root, f"abl-s{i}", best=80, last=80, seconds=10, seed=i, teacher="resnet20", student="resnet8",
                 losses=["kd"], strategy="abl", labels={"method": "kd", "strategy": "abl"},
                 extra={"abl_gammas": [[1 - g, g] for g in g2], "abl_gamma_source": "search",
                        "abl_head_top1": [50.0 + i, 60.0, 80.0]})
        fake_run(root, f"sakd-s{i}", best=80, last=80, seconds=10, seed=i, teacher="resnet20", student="resnet8",
                 losses=["at"], strategy="sakd", labels={"method": "at", "strategy": "sakd"},
                 extra={"sakd_spots": ["stage1", "logits"], "sakd_routing": {"overall": [0.2 + 0.2 * i, 1.0]}})
    markdown, _ = build_report(root, tmp_path / "out")
    abl_line = next(line for line in markdown.splitlines() if line.startswith("| kd / abl"))
    first, second = hand([0.70, 0.60]), hand([0.40, 0.50])
    assert f"{first[0]:.3f} ± {first[1]:.3f}, {second[0]:.3f} ± {second[1]:.3f}" in abl_line
    assert "| 2 | search |" in abl_line and f"{hand([50.0, 51.0])[0]:.2f}" in abl_line
    sakd_line = next(line for line in markdown.splitlines() if line.startswith("| at / sakd"))
    assert f"stage1 {hand([0.2, 0.4])[0]:.2f} ± {hand([0.2, 0.4])[1]:.2f}" in sakd_line and "logits 1.00 ± 0.00" in sakd_line


def test_gain_over_standard_prefers_the_standard_label(tmp_path):
    """Another standard-strategy row of the same method (e.g. SAKD's +KD baseline) is not the reference."""
    root = tmp_path / "runs"
    for label, best in (("standard_kd", 90.0), ("standard", 80.0), ("sakd", 85.0)):
        fake_run(root, f"at-{label}", best=best, last=best, seconds=10, seed=0, teacher="resnet20", student="resnet8",
                 losses=["at"], strategy="sakd" if label == "sakd" else "standard",
                 labels={"method": "at", "strategy": label})
    rows = {r.strategy: r for r in group(collect(root)[0])}
    assert rows["sakd"].gain_standard == pytest.approx((5.0, 5.0))
