"""Validation-split accuracy of every finished run of a sweep, for choices that must not see the test split.

    python results/abl-depth/validation.py results/abl-depth/runs [--out results/abl-depth/validation.md]

Evaluates each run's final student on the validation split it held out of its training set (the rows ABL
searched its gammas on; ``adakd eval RUN --split val``), keeps the result in RUN/val.json (evaluated once), and
prints a table with the rows of ``adakd report`` (its run collection and grouping): mean +- std over seeds of
the validation and the test top-1.
"""
import argparse
import json
from pathlib import Path

from adakd.api import evaluate_checkpoint
from adakd.tools.report.table import Stats, collect, format_stats, group, setting_label


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
    records, _ = collect(args.runs)
    lines = ["| method | strategy | setting | n | validation top-1 (%) | test top-1, last (%) | seeds |",
             "|---|---|---|---|---|---|---|"]
    for row in group(records):
        val = Stats.of(val_top1(r.run_dir) for r in row.runs)
        lines.append(f"| {row.method} | {row.strategy} | {setting_label(row)} | {row.n} | {format_stats(val)} "
                     f"| {format_stats(row.last)} | {', '.join(str(s) for s in row.seeds)} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
