"""Summarise Fashion-MNIST KD runs on the two pipelines: per-seed and mean +- std accuracy and time.

    python studies/stream/compare_stream_device.py RUNS_DIR --out studies/stream/fmnist_kd
    python studies/stream/compare_stream_device.py --from-json studies/stream/fmnist_kd.json   # the table again

Reads ``RUNS_DIR/<path>-s<seed>/summary.json`` (``path`` = device or stream) and writes ``OUT.json`` (the
study's record of these runs) and ``OUT.md`` (a table: last / best test top-1, training seconds, images/s).
The std is the sample std (n - 1). ``--from-json`` rebuilds the table from the record alone.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def table(rows: dict[str, list[dict]]) -> tuple[dict, str]:
    """(statistics per pipeline, the markdown table) of {pipeline: [per-seed summary fields]}."""
    lines = ["| pipeline | seeds | last top-1 (mean +- std) | best top-1 | train s (mean) | images/s (mean) "
             "| per seed (last top-1, train s) |", "|---|---|---|---|---|---|---|"]
    stats = {}
    for path, runs in sorted(rows.items()):
        def mean_std(key: str) -> tuple[float, float]:
            values = [r[key] for r in runs]
            return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))

        last, best, secs, rate = mean_std("last_top1"), mean_std("best_top1"), mean_std("train_seconds"), \
            mean_std("images_per_second")
        stats[path] = {"runs": runs, "last_top1": last, "best_top1": best, "train_seconds": secs,
                       "images_per_second": rate}
        per_seed = ", ".join(f"s{r['seed']}: {r['last_top1']:.2f} / {r['train_seconds']:.0f} s" for r in runs)
        lines.append(f"| {path} | {len(runs)} | {last[0]:.2f} +- {last[1]:.2f} | {best[0]:.2f} +- {best[1]:.2f} | "
                     f"{secs[0]:.0f} | {rate[0]:.0f} | {per_seed} |")
    return stats, "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="?")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--from-json", type=Path, help="an OUT.json written before: print its table")
    args = parser.parse_args()
    if args.from_json:
        _, text = table({path: stats["runs"] for path, stats in json.loads(args.from_json.read_text()).items()})
        print(text, end="")
        return
    if args.runs is None or args.out is None:
        parser.error("RUNS and --out are needed (or --from-json)")
    rows: dict[str, list[dict]] = {}
    for summary in sorted(args.runs.glob("*-s*/summary.json")):
        match = re.fullmatch(r"(device|stream)-s(\d+)", summary.parent.name)
        if match:
            data = json.loads(summary.read_text())
            rows.setdefault(match.group(1), []).append({"seed": int(match.group(2)), **{
                k: data.get(k) for k in ("last_top1", "best_top1", "teacher_top1", "train_seconds", "images_per_second",
                                         "precision", "channels_last")}})
    stats, text = table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(stats, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
