"""Routing and accuracy of the SAKD "chance to route" sweep (studies/sakd-chance/sweep.yaml), one row per grid cell.

    python studies/sakd-chance/summarize.py studies/sakd-chance > studies/sakd-chance/routing.md   # the record
    python studies/sakd-chance/summarize.py studies/sakd-chance/runs                             # run directories

Per cell (routing x teacher x schedule): n, last-epoch test top-1 (mean ± std over seeds), and the fraction of
training samples distilled at each spot (``route_teacher.<spot>`` of metrics.jsonl), at the first epoch, the middle
epoch and the last epoch, averaged over seeds. Fractions under 0.99 are what "the policy routes" would look like.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

from adakd.tools.report.record import load_runs
from adakd.tools.report.table import Stats, format_stats


def routed(rows: list[dict], index: int) -> dict[str, float]:
    return {k.split(".", 1)[1]: v for k, v in rows[index].items() if k.startswith("route_teacher.")}


def cells(root: Path) -> dict[tuple[str, ...], list[tuple[dict, list[dict]]]]:
    """(routing, teacher, schedule) -> [(summary, epoch metrics)] of the finished runs (run dirs or the record)."""
    out: dict[tuple[str, ...], list[tuple[dict, list[dict]]]] = {}
    for run in load_runs(root):
        if not run.sweep or not run.summary:
            continue
        labels = run.sweep["labels"]
        key = (labels["routing"], labels["teacher"], labels["schedule"])
        out.setdefault(key, []).append((run.summary, run.epochs))
    return out


def fmt_routes(runs: list[tuple[dict, list[dict]]], where: str) -> str:
    picks = {"first": 0, "middle": None, "last": -1}
    parts: dict[str, list[float]] = {}
    for _, rows in runs:
        index = picks[where] if picks[where] is not None else len(rows) // 2
        for spot, value in routed(rows, index).items():
            parts.setdefault(spot, []).append(value)
    return ", ".join(f"{spot} {statistics.mean(v):.3f}" for spot, v in parts.items()) or "-"


def main() -> None:
    root = Path(sys.argv[1])
    print("| routing | teacher | schedule | n | last top-1 | routed fraction, first epoch | middle epoch | last epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for (routing, teacher, schedule), runs in sorted(cells(root).items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        acc = format_stats(Stats.of(float(s["last_top1"]) for s, _ in runs))
        print(f"| {routing} | {teacher} | {schedule} | {len(runs)} | {acc} | {fmt_routes(runs, 'first')} | "
              f"{fmt_routes(runs, 'middle')} | {fmt_routes(runs, 'last')} |")


if __name__ == "__main__":
    main()
