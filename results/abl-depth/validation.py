"""Validation-split accuracy of every finished run of a sweep, for choices that must not see the test split.

    python results/abl-depth/validation.py results/abl-depth/runs [--out results/abl-depth/validation.md]

Evaluates each run's final student on the validation split it held out of its training set (the rows ABL
searched its gammas on; ``adakd eval RUN --split val``), keeps the result in RUN/val.json (evaluated once), and
prints a table: the mean +- std over seeds of each row (run name without its ``-sN`` seed suffix).
"""
import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from adakd.api import evaluate_checkpoint


def val_top1(run: Path) -> float:
    record = run / "val.json"
    if not record.is_file():
        result = evaluate_checkpoint(run, split="val", device="cpu")
        record.write_text(json.dumps({k: result[k] for k in ("split", "count", "top1", "top5", "loss")}, indent=2))
    return float(json.loads(record.read_text())["top1"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", type=Path)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rows: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for run in sorted(d for d in args.runs.iterdir() if (d / "summary.json").is_file()):
        name, seed = re.fullmatch(r"(.*)-s(\d+)", run.name).groups()
        summary = json.loads((run / "summary.json").read_text())
        rows[name].append((int(seed), val_top1(run), float(summary["last_top1"])))

    def fmt(values: list[float]) -> str:
        return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}" if len(values) > 1 \
            else f"{values[0]:.2f}"

    lines = ["| row | n | validation top-1 (%) | test top-1 (%) | seeds |", "|---|---|---|---|---|"]
    for name, runs in rows.items():
        lines.append(f"| {name} | {len(runs)} | {fmt([v for _, v, _ in runs])} | {fmt([t for _, _, t in runs])} "
                     f"| {', '.join(str(s) for s, _, _ in runs)} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
