"""Validation-split accuracy of every finished run of a sweep, for choices that must not see the test split.

    python studies/abl-depth/validation.py studies/abl-depth/runs [--out studies/abl-depth/validation.md]
    python studies/abl-depth/validation.py studies/abl-depth --out studies/abl-depth/validation.md  # from runs.jsonl.gz

Evaluates each run's final student on the validation split it held out of its training set (the rows ABL
searched its gammas on; ``adakd eval RUN --split val``), keeps the result in RUN/val.json (evaluated once; the
study's record keeps it too, so the table is rebuilt from the record without the runs), and prints a table with
the rows of ``adakd report`` (its run collection and grouping): mean +- std over seeds of the validation and the
test top-1.
"""
import argparse
import json
from pathlib import Path

from adakd.tools.report.table import RunRecord, Stats, collect, format_stats, group, setting_label

VAL_FILE = "val.json"


def val_top1(run: RunRecord) -> float:
    if VAL_FILE not in run.stored.files:  # not evaluated yet: needs the run directory's checkpoint
        from adakd.api import evaluate_checkpoint

        result = evaluate_checkpoint(run.run_dir, split="val", device="cpu")
        record = {k: result[k] for k in ("split", "count", "top1", "top5", "loss")}
        (run.run_dir / VAL_FILE).write_text(json.dumps(record, indent=2))
        run.stored.files[VAL_FILE] = record
    return float(run.stored.files[VAL_FILE]["top1"])


def table(runs: Path) -> str:
    records, _ = collect(runs)
    lines = ["| method | strategy | setting | n | validation top-1 (%) | test top-1, last (%) | seeds |",
             "|---|---|---|---|---|---|---|"]
    for row in group(records):
        val = Stats.of(val_top1(r) for r in row.runs)
        lines.append(f"| {row.method} | {row.strategy} | {setting_label(row)} | {row.n} | {format_stats(val)} "
                     f"| {format_stats(row.last)} | {', '.join(str(s) for s in row.seeds)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", type=Path, help="the run directories, or the study folder (its record)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    text = table(args.runs)
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
