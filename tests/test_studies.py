"""Every committed study table is rebuilt, byte for byte, from the study's compact record alone (studies/*/runs.jsonl.gz,
or the JSON record of the stream study), by the command its README names; and `adakd record` writes a record from
which the report equals the report of the run directories themselves."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml

from adakd.cli import main
from adakd.tools.report.record import StoredRun, load_runs, read_record, record_in
from adakd.tools.report.table import build_report

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "studies"
#: Prose and notes among the studies' markdown files (not tables built from runs).
PROSE = {"README.md", "abl.md", "sakd.md"}
#: Tables that no compact record rebuilds, each with why (checked by path, so a new one must be named here).
NOT_FROM_A_RECORD = {
    "abl-depth/cost.md": "a timing report (abl_step_cost.py's output on a loaded machine), prose around its figures",
    "tune-dkd/run1/tpe/tune_report.md": "adakd report of an Optuna study whose storage (sqlite) is not committed",
    "tune-dkd/run1/tpe/trials.csv": "the same study's trials table",
    "tune-dkd/run1/grid/tune_report.md": "adakd report of the grid study (storage not committed)",
    "tune-dkd/run1/grid/trials.csv": "the grid study's trials table",
}


def script(path: str):
    """Import a study's script (they are files, not a package)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, STUDIES / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report_tables(study: str, tmp: Path) -> dict[str, str]:
    _, files = build_report(STUDIES / study, tmp / study)
    return {f"{study}/{f.name}": f.read_text() for f in files}


def regenerated(tmp: Path, capsys) -> dict[str, str]:
    """Every table, as its study's command builds it from the record."""
    tables = {**report_tables("abl-depth", tmp), **report_tables("fmnist-methods", tmp)}
    tables["abl-depth/validation.md"] = script("abl-depth/validation.py").table(STUDIES / "abl-depth")
    summarize = script("sakd-chance/summarize.py")
    capsys.readouterr()
    summarize.sys.argv = ["summarize.py", str(STUDIES / "sakd-chance")]
    summarize.main()
    tables["sakd-chance/routing.md"] = capsys.readouterr().out
    cache = script("teacher-cache/summarize.py")
    tables["teacher-cache/recipe15/accuracy.md"] = cache.table(cache.cells(STUDIES / "teacher-cache", "recipe15/accuracy/"))
    tables["teacher-cache/accuracy.md"] = cache.loaded_table(STUDIES / "teacher-cache")
    stream = script("stream/compare_stream_device.py")
    for name in ("fmnist_kd", "fmnist_student"):
        runs = {k: v["runs"] for k, v in json.loads((STUDIES / "stream" / f"{name}.json").read_text()).items()}
        tables[f"stream/{name}.md"] = stream.table(runs)[1]
    epochs = json.loads((STUDIES / "stream" / "fmnist_student_s0.json").read_text())
    tables["stream/fmnist_student_s0.md"] = stream.epoch_table(epochs)
    return tables


def committed_tables() -> set[str]:
    files = {p.relative_to(STUDIES).as_posix() for p in STUDIES.rglob("*") if p.suffix in (".md", ".csv")}
    return {f for f in files if Path(f).name not in PROSE and f not in NOT_FROM_A_RECORD}


def test_every_committed_table_is_rebuilt_byte_for_byte_from_the_records(tmp_path, capsys):
    tables = regenerated(tmp_path, capsys)
    assert set(tables) == committed_tables()  # no table left unchecked, none checked that is not committed
    for name, text in tables.items():
        assert text == (STUDIES / name).read_text(), name


def test_the_record_holds_every_run_of_the_study_sorted():
    runs = read_record(record_in(STUDIES / "abl-depth"))
    names = [r.name for r in runs]
    assert len(names) == 41 and names == sorted(names) and "abl-depth-kd-abl_sgd-r56_r20-s0" in names  # 26 + the 15 runs of sweep_cost*.yaml
    unfinished = [r.name for r in runs if not r.summary]
    assert unfinished == ["abl-depth-long-kd-abl_search30-r56_r20-s0"]  # stopped at 20 of 30 search epochs
    assert all(r.files.get("val.json", {}).get("split") == "val" for r in runs if r.summary)


def materialize(runs, root: Path) -> None:
    """Run directories as the trainer and the sweep leave them, from record lines."""
    for run in runs:
        d = root / run.name
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(yaml.safe_dump(run.config))
        (d / "sweep.json").write_text(json.dumps(run.sweep))
        if run.summary:
            (d / "summary.json").write_text(json.dumps(run.summary))
        (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in run.metrics))
        (d / "train.log").write_text("left out of the record\n")


@pytest.mark.parametrize("out_name", ["runs.jsonl", "runs.jsonl.gz"])
def test_record_of_run_directories_gives_the_same_report(tmp_path, capsys, out_name):
    picked = [r for r in load_runs(STUDIES / "abl-depth") if r.sweep["labels"]["method"] == "kd"
              and r.sweep["labels"]["strategy"] in ("standard", "abl", "abl_search30")]
    assert len(picked) == 7  # 3 + 3 seeds, and the unfinished 30-epoch search
    study = tmp_path / "study"
    materialize(picked, study / "runs")
    out = ["-o", str(study / out_name)] if out_name == "runs.jsonl" else []  # default: runs.jsonl.gz beside runs/
    assert main(["record", str(study / "runs"), *out]) == 0
    assert f"7 runs of {study / 'runs'} -> {study / out_name}" in capsys.readouterr().out
    again = load_runs(study)
    assert [(r.name, r.config, r.sweep, r.summary, r.metrics) for r in again] == \
        [(r.name, r.config, r.sweep, r.summary, r.metrics) for r in picked]
    assert again[0].config_digest == picked[0].config_digest and len(again[0].config_digest) == 16
    from_dirs, _ = build_report(study / "runs", tmp_path / "a")
    shutil.rmtree(study / "runs")  # the record alone
    from_record, _ = build_report(study, tmp_path / "b")
    assert from_record == from_dirs.replace("# Results: runs", "# Results: study")
    assert "1 run(s) without summary.json (unfinished)" in from_record and "| kd | abl |" in from_record


def test_record_merges_into_an_existing_record(tmp_path, capsys):
    """A new machine has only the run directories it made: recording them keeps the record's other runs
    (a run on disk replaces its line); --replace writes the runs on disk alone."""
    runs = [r for r in load_runs(STUDIES / "abl-depth") if r.sweep["labels"]["method"] == "kd"
            and r.sweep["labels"]["strategy"] in ("standard", "abl")]
    assert len(runs) == 6
    study = tmp_path / "study"
    materialize(runs[:4], study / "runs")
    assert main(["record", str(study / "runs")]) == 0
    record = study / "runs.jsonl.gz"
    shutil.rmtree(study / "runs")
    changed = StoredRun.from_line(runs[3].to_line())
    changed.summary = {**changed.summary, "best_top1": 12.5}
    materialize([changed, *runs[4:]], study / "runs")  # one rerun + two new runs
    assert main(["record", str(study / "runs")]) == 0
    assert "6 runs of" in capsys.readouterr().out.splitlines()[-1]
    merged = load_runs(study)
    assert [r.name for r in merged] == sorted(r.name for r in runs)
    by_name = {r.name: r for r in merged}
    assert by_name[runs[3].name].summary["best_top1"] == 12.5  # the directory on disk wins
    assert all(by_name[r.name].metrics == r.metrics for r in runs[:3])  # kept from the record
    assert main(["record", str(study / "runs"), "--replace"]) == 0
    assert sorted(r.name for r in load_runs(study)) == sorted(r.name for r in [changed, *runs[4:]])
    assert record.is_file()


def test_a_broken_record_is_one_clear_error(tmp_path):
    (tmp_path / "runs.jsonl").write_text('{"no name": 1}\n')
    assert main(["report", str(tmp_path)]) == 2
