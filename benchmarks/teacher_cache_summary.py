"""Collect the issue-18 accuracy runs into a table: last and best test top-1 of each (method, teacher) cell of a
sweep whose grid has the axes ``method`` and ``teacher`` (sweeps/cache15_accuracy.yaml), per seed and mean +- std,
with the mean training seconds.

    python benchmarks/teacher_cache_summary.py results/teacher-cache/recipe15/accuracy \
        --out results/teacher-cache/recipe15/accuracy.md

Reads every ``<run>/sweep.json`` (the sweep's labels of the run) beside its ``summary.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def cells(root: Path) -> dict[tuple[str, str], list[tuple[int, dict]]]:
    """(method, teacher label) -> [(seed, summary)] for every finished run under ``root``."""
    out: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for meta_path in sorted(root.rglob("sweep.json")):
        summary = meta_path.parent / "summary.json"
        if not summary.exists():
            continue
        meta = json.loads(meta_path.read_text())
        labels = meta["labels"]
        key = (labels.get("method", "?"), labels.get("teacher", "?"))
        out.setdefault(key, []).append((int(meta["seed"]), json.loads(summary.read_text())))
    return out


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
    parser.add_argument("root", type=Path, help="the sweep's output_dir")
    parser.add_argument("--out", type=Path, help="write the table here too (markdown)")
    args = parser.parse_args()
    text = table(cells(args.root))
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
