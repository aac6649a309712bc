"""Summarise Fashion-MNIST KD runs on the two pipelines: per-seed and mean +- std accuracy and time.

    python studies/stream/compare_stream_device.py RUNS_DIR --out studies/stream/fmnist_kd
    python studies/stream/compare_stream_device.py --from-json studies/stream/fmnist_kd.json   # the table again

Reads ``RUNS_DIR/<path>-s<seed>/summary.json`` (``path`` = device or stream) and writes ``OUT.json`` (the
study's record of these runs) and ``OUT.md`` (a table: last / best test top-1, training seconds, images/s).
The std is the sample std (n - 1). ``--from-json`` rebuilds the table from the record alone.

    python studies/stream/compare_stream_device.py RUNS_DIR --epochs 0 --out studies/stream/fmnist_student_s0
    python studies/stream/compare_stream_device.py --epochs-from-json studies/stream/fmnist_student_s0.json

``--epochs SEED``: the two runs of one seed epoch by epoch (test and train top-1, the difference stream - device;
its mean over all epochs and the last 5; the training seconds to the last epoch), from their metrics.jsonl.
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


EPOCH_KEYS = ("epoch", "test_top1", "test_top5", "train_top1", "loss", "train_seconds", "lr")


def epoch_table(runs: dict[str, list[dict]]) -> str:
    """Epoch-by-epoch comparison of {"device": [epoch metrics], "stream": [...]} of one seed."""
    device, stream = ({r["epoch"]: r for r in runs[path]} for path in ("device", "stream"))
    common = sorted(set(device) & set(stream))
    lines = ["| epoch | device test top-1 | stream test top-1 | difference (stream - device) | device train top-1 "
             "| stream train top-1 |", "|---|---|---|---|---|---|"]
    diffs = []
    for epoch in common:
        a, b = device[epoch], stream[epoch]
        diffs.append(b["test_top1"] - a["test_top1"])
        lines.append(f"| {epoch} | {a['test_top1']:.2f} | {b['test_top1']:.2f} | {diffs[-1]:+.2f} | "
                     f"{a['train_top1']:.2f} | {b['train_top1']:.2f} |")
    last = common[-1]
    secs = device[last]["train_seconds"], stream[last]["train_seconds"]
    lines += ["", f"epochs compared: {len(common)} of {max(len(device), len(stream))}; mean difference over epochs "
              f"{statistics.mean(diffs):+.2f}, over the last 5 {statistics.mean(diffs[-5:]):+.2f} (points); training "
              f"seconds to epoch {last}: device {secs[0]:.0f}, stream {secs[1]:.0f} (ratio {secs[1] / secs[0]:.2f})"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="?")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--from-json", type=Path, help="an OUT.json written before: print its table")
    parser.add_argument("--epochs", type=int, metavar="SEED", help="compare the two runs of SEED epoch by epoch")
    parser.add_argument("--epochs-from-json", type=Path, help="an OUT.json of --epochs: print its table")
    args = parser.parse_args()
    if args.epochs_from_json:
        print(epoch_table(json.loads(args.epochs_from_json.read_text())), end="")
        return
    if args.from_json:
        _, text = table({path: stats["runs"] for path, stats in json.loads(args.from_json.read_text()).items()})
        print(text, end="")
        return
    if args.runs is None or args.out is None:
        parser.error("RUNS and --out are needed (or --from-json / --epochs-from-json)")
    if args.epochs is not None:
        runs = {}
        for path in ("device", "stream"):
            lines = (args.runs / f"{path}-s{args.epochs}" / "metrics.jsonl").read_text().splitlines()
            runs[path] = [{k: r[k] for k in EPOCH_KEYS if k in r}
                          for r in map(json.loads, lines) if r.get("kind") == "epoch"]
        text = epoch_table(runs)
        args.out.with_suffix(".json").write_text(json.dumps(runs, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(text)
        print(text, end="")
        return
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
