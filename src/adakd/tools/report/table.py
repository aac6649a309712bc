"""The results table of a sweep (or any folder of runs): seeds grouped, mean +- std, gains, published numbers.

    adakd report studies/fmnist-methods/sweep.yaml   # the sweep's output_dir (raw run directories)
    adakd report studies/fmnist-methods/runs --out studies/fmnist-methods
    adakd report studies/fmnist-methods              # the study's compact record (runs.jsonl.gz, record.py)

Every run with a ``summary.json`` below the target (or in its record) counts. A run is identified by its
dataset, teacher, student, method and strategy (and the other labels of its sweep): the method is
the sweep's ``method`` label when there is one, else the run's loss names joined by ``_``
(``scratch`` for a run without teacher); the strategy the ``strategy`` label, else the strategy's
name. Runs differing only in seed form one row:

    mean = (1/n) sum_i x_i,   std = sqrt( sum_i (x_i - mean)^2 / (n - 1) )   (sample std; "-" for n = 1)

for the best-epoch top-1 (DKD's convention) and the last-epoch top-1 (CRD's convention). Gains are
differences of means: each method over ``scratch`` (same dataset and student), each adaptive
strategy (sakd, abl, ...) over the same method with the ``standard`` strategy (same pair).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ...errors import ConfigError
from ...runtime.atomic import atomic_write_text
from .published import Published, lookup
from .record import StoredRun, is_record, load_runs, record_in
from .stats import Stats

SCRATCH = "scratch"
STANDARD = "standard"


@dataclass
class RunRecord:
    """What the table needs from one run (its directory, or its line of a study's record)."""

    run_dir: Path  # where it lives (or lived, for a run known from a record)
    dataset: str | None
    teacher: str | None
    student: str
    method: str
    strategy: str  # label (sweep axis) or strategy name
    strategy_name: str  # the registered strategy
    setting: tuple[tuple[str, str], ...]  # other sweep labels
    seed: int | None
    best_top1: float
    last_top1: float
    train_seconds: float
    teacher_top1: float | None
    stored: StoredRun  # what the run left: config, sweep labels, summary, metrics, added files


@dataclass
class Row:
    dataset: str | None
    teacher: str | None
    student: str
    method: str
    strategy: str
    strategy_name: str
    setting: tuple[tuple[str, str], ...]
    seeds: list[int | None]
    best: Stats
    last: Stats
    train_seconds: Stats
    teacher_top1: Stats
    gain_scratch: tuple[float, float] | None = None  # (best, last)
    gain_standard: tuple[float, float] | None = None
    time_vs_standard: float | None = None  # mean train seconds / the standard strategy's
    published: Published | None = None
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.runs)


# ------------------------------------------------------------------ reading runs

def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def method_of(losses: Iterable[str], teacher: str | None) -> str:
    names = sorted(losses)
    return "_".join(names) if names and teacher else SCRATCH


def read_run(run: StoredRun, run_dir: Path) -> RunRecord | None:
    """The record of a finished run (None when its ``summary.json`` is missing or unreadable)."""
    summary, config, meta = run.summary, run.config, run.sweep
    if not summary or "best_top1" not in summary:
        return None
    labels: dict[str, str] = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    teacher = summary.get("teacher")
    if teacher is None and isinstance(config.get("teacher"), dict):
        teacher = config["teacher"].get("name")
    losses = summary.get("losses")
    if losses is None:
        losses = list(config.get("losses") or {})
    dataset = summary.get("dataset") or (config.get("data") or {}).get("name")
    strategy_name = summary.get("strategy") or (config.get("strategy") or {}).get("name") or STANDARD
    student = summary.get("student") or (config.get("student") or {}).get("name") or "?"
    method = labels.pop("method", None) or method_of(losses, teacher)
    strategy = labels.pop("strategy", None) or strategy_name
    seed = summary.get("seed", meta.get("seed"))
    return RunRecord(run_dir=run_dir, dataset=dataset, teacher=teacher, student=student, method=method,
                     strategy=strategy, strategy_name=strategy_name, setting=tuple(sorted(labels.items())),
                     seed=seed, best_top1=_num(summary.get("best_top1")), last_top1=_num(summary.get("last_top1")),
                     train_seconds=_num(summary.get("train_seconds")),
                     teacher_top1=None if summary.get("teacher_top1") is None else _num(summary.get("teacher_top1")),
                     stored=run)


def runs_root(target: str | os.PathLike[str]) -> Path:
    """Where the runs are: a sweep file's ``output_dir``, or ``target`` itself (a folder of run directories, a
    study folder holding a record, or a record file)."""
    path = Path(target).expanduser()
    if path.is_file() and not is_record(path):
        from ..sweep import load_sweep

        return load_sweep(path).output_dir
    if not path.is_dir():
        raise ConfigError(f"{path} is neither a sweep file, a record nor a folder of runs.")
    return path


def study_folder(root: Path) -> Path:
    """The folder a report of ``root`` is about: a record's folder, else ``root``."""
    return root.parent if root.is_file() else root


def collect(root: Path) -> tuple[list[RunRecord], list[Path]]:
    """Finished runs below ``root`` (or in its record) and the runs without a summary (unfinished)."""
    base = study_folder(root) / "runs" if root.is_file() or record_in(root) else root  # where the run dirs were
    records, unfinished = [], []
    for run in load_runs(root):
        run_dir = base / run.name
        record = read_run(run, run_dir)
        if record is None:
            unfinished.append(run_dir)
        else:
            records.append(record)
    return records, unfinished


# ------------------------------------------------------------------ grouping

def _key(r: RunRecord) -> tuple:
    return (r.dataset, r.teacher, r.student, r.method, r.strategy, r.setting)


def group(records: list[RunRecord]) -> list[Row]:
    """One row per (dataset, teacher, student, method, strategy, setting), seeds pooled, gains and published filled."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(_key(r), []).append(r)
    rows = []
    for (dataset, teacher, student, method, strategy, setting), runs in groups.items():
        rows.append(Row(dataset, teacher, student, method, strategy, runs[0].strategy_name, setting,
                        seeds=sorted((r.seed for r in runs), key=lambda s: (s is None, s)),
                        best=Stats.of(r.best_top1 for r in runs), last=Stats.of(r.last_top1 for r in runs),
                        train_seconds=Stats.of(r.train_seconds for r in runs),
                        teacher_top1=Stats.of(r.teacher_top1 for r in runs if r.teacher_top1 is not None), runs=runs))
    for row in rows:
        row.published = published_for(row)
        scratch = _scratch_row(row, rows)
        if scratch is not None and row is not scratch:
            row.gain_scratch = (row.best.mean - scratch.best.mean, row.last.mean - scratch.last.mean)
        if row.strategy_name != STANDARD and row.method != SCRATCH:
            same = [o for o in rows if o.strategy_name == STANDARD and (o.dataset, o.teacher, o.student, o.method,
                    o.setting) == (row.dataset, row.teacher, row.student, row.method, row.setting)]
            base = min(same, key=lambda o: o.strategy != STANDARD, default=None)  # the `standard` label first
            if base is not None:
                row.gain_standard = (row.best.mean - base.best.mean, row.last.mean - base.last.mean)
                if row.train_seconds.n and base.train_seconds.n and base.train_seconds.mean > 0:
                    row.time_vs_standard = row.train_seconds.mean / base.train_seconds.mean
    rows.sort(key=_order)
    return rows


def _scratch_row(row: Row, rows: list[Row]) -> Row | None:
    """The ``scratch`` row of the same dataset and student: same other labels if there is one, else the only one."""
    if row.method == SCRATCH:
        return None
    candidates = [o for o in rows if o.method == SCRATCH and o.dataset == row.dataset and o.student == row.student]
    same = [o for o in candidates if o.setting == row.setting]
    if same:
        return same[0]
    return candidates[0] if len(candidates) == 1 else None


def published_for(row: Row) -> Published | None:
    if row.method == SCRATCH and row.teacher is None:
        return lookup(row.dataset, None, row.student, SCRATCH) or lookup(row.dataset, None, row.student, "teacher")
    return lookup(row.dataset, row.teacher, row.student, row.method, row.strategy_name)


def _order(row: Row) -> tuple:
    return (str(row.dataset), str(row.teacher or ""), row.student, row.setting, row.method != SCRATCH, row.method,
            row.strategy_name != STANDARD, row.strategy)


# ------------------------------------------------------------------ rendering

def format_stats(s: Stats) -> str:
    """``mean ± std`` (2 decimals; the mean alone for one value, ``-`` for none)."""
    if s.n == 0:
        return "-"
    return f"{s.mean:.2f} ± {s.std:.2f}" if s.std is not None else f"{s.mean:.2f}"


def _gain(g: tuple[float, float] | None) -> str:
    return "" if g is None else f"{g[0]:+.2f} / {g[1]:+.2f}"


def setting_label(row: Row) -> str:
    return ", ".join(f"{k}={v}" for k, v in row.setting)


MD_NOTE = ("Top-1 (%) on the test split, mean ± sample std (n - 1) over seeds (no ± with one seed). "
           "**best** = best epoch (DKD's convention), **last** = last epoch (CRD's convention). "
           "Δ = difference of means, best / last: over `scratch` (same dataset and student) and over the "
           "same method with the `standard` strategy; time × = its mean training time over that of the standard "
           "strategy (wall clock of the runs, as loaded as the machine was). Published: the paper's number where dataset, pair and "
           "method match (its source says which epoch).")


def to_markdown(rows: list[Row], title: str | None = None, unfinished: int = 0) -> str:
    with_setting = any(r.setting for r in rows)
    head = ["dataset", "teacher", "student", "method", "strategy"] + (["setting"] if with_setting else []) + [
        "n", "best top-1", "last top-1", "Δ vs scratch", "Δ vs standard", "train s", "time ×", "published",
        "source"]
    lines = [f"# {title}", ""] if title else []
    lines += [MD_NOTE, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r.dataset or "?"), r.teacher or "-", r.student, r.method, r.strategy]
        if with_setting:
            cells.append(setting_label(r))
        cells += [str(r.n), format_stats(r.best), format_stats(r.last), _gain(r.gain_scratch), _gain(r.gain_standard),
                  f"{r.train_seconds.mean:.0f}" if r.train_seconds.n else "-",
                  f"{r.time_vs_standard:.2f}" if r.time_vs_standard is not None else "",
                  f"{r.published.top1:.2f}" if r.published else "", r.published.source if r.published else ""]
        lines.append("| " + " | ".join(cells) + " |")
    if unfinished:
        lines += ["", f"{unfinished} run(s) without summary.json (unfinished) are not in the table."]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ["dataset", "teacher", "student", "method", "strategy", "strategy_name", "setting", "n", "seeds",
               "best_top1_mean", "best_top1_std", "last_top1_mean", "last_top1_std", "teacher_top1_mean",
               "train_seconds_mean", "gain_vs_scratch_best", "gain_vs_scratch_last", "gain_vs_standard_best",
               "gain_vs_standard_last", "time_vs_standard", "published_top1", "published_source"]


def _cell(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4f}"


def to_csv(rows: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([
            r.dataset or "", r.teacher or "", r.student, r.method, r.strategy, r.strategy_name, setting_label(r), r.n,
            " ".join(str(s) for s in r.seeds), _cell(r.best.mean), _cell(r.best.std), _cell(r.last.mean),
            _cell(r.last.std), _cell(r.teacher_top1.mean if r.teacher_top1.n else None), _cell(r.train_seconds.mean),
            _cell(r.gain_scratch[0] if r.gain_scratch else None), _cell(r.gain_scratch[1] if r.gain_scratch else None),
            _cell(r.gain_standard[0] if r.gain_standard else None),
            _cell(r.gain_standard[1] if r.gain_standard else None), _cell(r.time_vs_standard),
            _cell(r.published.top1 if r.published else None), r.published.source if r.published else "",
        ])
    return out.getvalue()


def build_report(target: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
                 ) -> tuple[str, list[Path]]:
    """Write ``results.md`` and ``results.csv`` for the runs of ``target`` (a sweep file or a folder)
    into ``out`` (default: the sweep's output_dir parent, or the folder itself); return (markdown, files).
    An ``adakd tune`` study folder gets its own report (:mod:`adakd.tools.tune.report`)."""
    from ..tune.report import build_study_report, is_tune_study

    if is_tune_study(target):
        return build_study_report(target, out)
    root = runs_root(target)
    records, unfinished = collect(root)
    if not records:
        raise ConfigError(f"no finished run (summary.json) under {root}: run the sweep first "
                          f"(adakd sweep SWEEP.yaml), or point at the folder holding the run directories.")
    rows = group(records)
    from_sweep = Path(target).is_file() and not is_record(Path(target))
    if from_sweep:  # the sweep's name, as its study folder is usually named: one title either way
        from ..sweep import load_sweep

        title = load_sweep(target).name
    else:
        title = study_folder(root).name
    from .adaptive import adaptive_sections  # it builds on this module's rows

    markdown = to_markdown(rows, title=f"Results: {title}", unfinished=len(unfinished)) + adaptive_sections(rows)
    out_dir = Path(out) if out else (root.parent if from_sweep else study_folder(root))
    files = [atomic_write_text(out_dir / "results.md", markdown),
             atomic_write_text(out_dir / "results.csv", to_csv(rows))]
    return markdown, files
