"""The teacher-cache study's accuracy tables, from its record (runs.jsonl.gz) or from run directories.

    python studies/teacher-cache/summarize.py studies/teacher-cache --under recipe15/accuracy/ \
        --out studies/teacher-cache/recipe15/accuracy.md       # quiet machine, recipe teacher (sweep_accuracy.yaml)
    python studies/teacher-cache/summarize.py studies/teacher-cache --loaded --out studies/teacher-cache/accuracy.md

Default table: last and best test top-1 of each (method, teacher) cell of a sweep whose grid has the axes
``method`` and ``teacher``, per seed and mean +- std, with the mean training seconds; ``--under PREFIX`` keeps the
runs whose path (below the root) starts with PREFIX. ``--loaded``: the first, loaded-machine measurement (4 epochs,
a 1-epoch teacher), whose runs came from three sweeps and two hand-made runs; the teacher label of a run is its
folder's: ``smallk/`` K=2, ``sweep-cached/`` K=epochs, ``sweep-live/`` live, ``accuracy/runs/`` its sweep label.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from adakd.tools.report.record import load_runs


def cells(root: Path, under: str = "") -> dict[tuple[str, str], list[tuple[int, dict]]]:
    """(method, teacher label) -> [(seed, summary)] for every finished sweep run under ``root`` (or its record)."""
    out: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for run in load_runs(root):
        if not run.name.startswith(under) or not run.sweep or not run.summary:
            continue
        labels = run.sweep["labels"]
        key = (labels.get("method", "?"), labels.get("teacher", "?"))
        out.setdefault(key, []).append((int(run.sweep["seed"]), run.summary))
    return out


#: The loaded-machine table's teacher label of a run, by its folder (accuracy/runs: the sweep's label).
LOADED_FOLDERS = {"smallk/": "K=2", "sweep-cached/runs/": "K=epochs", "sweep-live/runs/": "live", "accuracy/runs/": None}
LOADED_LABELS = {"k2": "K=2", "k_epochs": "K=epochs", "live": "live"}


def loaded_table(root: Path) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in load_runs(root):
        folder = next((f for f in LOADED_FOLDERS if run.name.startswith(f)), None)
        method = "_".join(sorted(run.config.get("losses") or {}))
        if folder is None or not run.summary or method not in ("kd", "dkd"):
            continue
        teacher = LOADED_FOLDERS[folder] or LOADED_LABELS[run.sweep["labels"]["teacher"]]
        groups.setdefault((method, teacher), []).append(run.summary)
    lines = ["| method | teacher | seeds | last top-1 per seed | mean +- std | train s per run |",
             "|---|---|---|---|---|---|"]
    for (method, teacher), runs in sorted(groups.items()):
        runs.sort(key=lambda s: s["seed"])
        last = [float(s["last_top1"]) for s in runs]
        lines.append(f"| {method} | {teacher} | {','.join(str(s['seed']) for s in runs)} | "
                     f"{', '.join(f'{v:.2f}' for v in last)} | {mean_std(last)} | "
                     f"{statistics.mean(float(s['train_seconds']) for s in runs):.0f} |")
    return "\n".join(lines) + "\n"


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {sd:.2f}"


def table(groups: dict[tuple[str, str], list[tuple[int, dict]]]) -> str:
    lines = ["| method | teacher | n | last top-1 per seed | last mean +- std | best mean +- std | train s (mean) |",
             "|---|---|---|---|---|---|---|"]
    for (method, teacher), items in sorted(groups.items()):
        items.sort(key=lambda item: item[0])
        last = [float(s["last_top1"]) for _, s in items]
        best = [float(s["best_top1"]) for _, s in items]
        secs = [float(s.get("train_seconds") or 0) for _, s in items]
        per_seed = ", ".join(f"s{seed} {v:.2f}" for (seed, _), v in zip(items, last))
        lines.append(f"| {method} | {teacher} | {len(items)} | {per_seed} | {mean_std(last)} | {mean_std(best)} | "
                     f"{statistics.mean(secs):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the study folder (its record) or a folder of run directories")
    parser.add_argument("--under", default="", help="only the runs whose path below the root starts with this")
    parser.add_argument("--loaded", action="store_true", help="the loaded-machine table (accuracy.md)")
    parser.add_argument("--out", type=Path, help="write the table here too (markdown)")
    args = parser.parse_args()
    text = loaded_table(args.root) if args.loaded else table(cells(args.root, args.under))
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
