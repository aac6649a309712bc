"""``adakd report STUDY_DIR`` for an ``adakd tune`` study: the best trial, a table of every trial, and
Optuna's matplotlib plots (optimization history, parameter importances, per-epoch validation curves).

Written beside the study (or to ``--out``): ``tune_report.md``, ``trials.csv``, ``history.png``,
``importance.png``, ``intermediate.png``.
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...runtime.atomic import atomic_savefig, atomic_write_text
from .study import STUDY_FILE, _optuna, driver_url


def is_tune_study(target: str | Path) -> bool:
    return (Path(target) / STUDY_FILE).is_file()


def _rows(study: Any, keys: list[str]) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        retried = t.system_attrs.get("failed_trial")
        rows.append({"trial": t.number, "state": t.state.name, "value": t.value,
                     "epochs": len(t.intermediate_values), **{k: t.params.get(k) for k in keys},
                     "retry_of": retried, "run_dir": t.user_attrs.get("run_dir", "")})
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _plots(study: Any, out: Path) -> tuple[list[Path], list[str]]:
    """Optuna's matplotlib figures as files; a plot that cannot be drawn yet is a note, not an error."""
    from ..report.plots import require_matplotlib

    plt = require_matplotlib()
    from optuna.visualization import matplotlib as ovm

    files, notes = [], []
    for name, draw in (("history", ovm.plot_optimization_history), ("importance", ovm.plot_param_importances),
                       ("intermediate", ovm.plot_intermediate_values)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = draw(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.tight_layout()
            files.append(atomic_savefig(figure, out / f"{name}.png", dpi=120))
            plt.close(figure)
        except Exception as exc:  # noqa: BLE001 - e.g. importances need two complete trials
            notes.append(f"{name} plot not drawn: {exc}")
    return files, notes


def build_study_report(target: str | Path, out: str | Path | None = None) -> tuple[str, list[Path]]:
    optuna = _optuna()
    folder = Path(target)
    meta = json.loads((folder / STUDY_FILE).read_text())
    try:
        study = optuna.load_study(study_name=meta["study"], storage=driver_url(meta["storage"]))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{folder}: cannot open study {meta['study']!r} in {meta['storage']} ({exc}).") from None
    keys = sorted({k for t in study.get_trials(deepcopy=False) for k in t.params})
    rows = _rows(study, keys)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines = [f"# Tuning study: {meta['study']}", "",
             f"Objective: {meta['metric']} on the validation split ({meta['direction']}); config {meta['config']}"
             + (f" with {' '.join(meta['overrides'])}" if meta["overrides"] else "") + f"; storage {meta['storage']}.",
             "Trials: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
             + f" (the study stops at {meta['trials']} complete or pruned).", ""]
    try:
        best = study.best_trial
        lines += [f"best trial: **{best.number}**, {meta['metric']} {best.value:.2f}: "
                  + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
                  + f" (run {best.user_attrs.get('run_dir', '?')}; config {folder / 'best.yaml'})", ""]
    except ValueError:
        lines += ["best trial: none complete yet", ""]
    header = ["trial", "state", meta["metric"], "epochs", *keys, "retry of"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [str(r["trial"]), r["state"], _fmt(r["value"]), str(r["epochs"]), *(_fmt(r[k]) for k in keys),
                 _fmt(r["retry_of"])]
        lines.append("| " + " | ".join(cells) + " |")
    out_dir = Path(out) if out else folder
    plots, notes = _plots(study, out_dir)
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots] + [f"_{n}_" for n in notes]
    markdown = "\n".join(lines) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows(rows)
    files = [atomic_write_text(out_dir / "tune_report.md", markdown),
             atomic_write_text(out_dir / "trials.csv", buffer.getvalue()), *plots]
    return markdown, files
