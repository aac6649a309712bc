"""The one-screen summary printed at the end of ``adakd train``."""
from __future__ import annotations

import math
from typing import Any


def _pct(x: Any) -> str:
    return f"{x:6.2f}%" if isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 else "     - "


def _secs(x: Any) -> str:
    if not isinstance(x, (int, float)):
        return "-"
    return f"{x:.0f} s" if x < 600 else f"{x / 60:.1f} min"


def format_summary(summary: dict[str, Any]) -> str:
    """A small table: teacher, scratch student (if trained), distilled student."""
    rows = []
    if summary.get("teacher"):
        rows.append((f"teacher  {summary['teacher']}", _pct(summary.get("teacher_top1")), "", "", ""))
    scratch = summary.get("scratch")
    if scratch:
        rows.append((f"student  {summary['student']} (scratch)", _pct(scratch["best_top1"]), _pct(scratch["last_top1"]),
                     _secs(scratch["train_seconds"]), f"{scratch['images_per_second']:.0f}"))
    method = "+".join(summary.get("losses") or []) or "ce"
    if summary.get("strategy", "standard") != "standard":
        method = f"{summary['strategy']}({method})"
    label = "distilled" if summary.get("teacher") else "trained"
    rows.append((f"student  {summary['student']} ({label}: {method})", _pct(summary["best_top1"]),
                 _pct(summary["last_top1"]), _secs(summary["train_seconds"]), f"{summary['images_per_second']:.0f}"))
    header = ("model", "best top-1", "last top-1", "time", "img/s")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(5)]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [line(header), "-" * len(line(header))] + [line(r) for r in rows]
    if scratch:
        gain = summary["best_top1"] - scratch["best_top1"]
        out.append(f"distillation gain over scratch: {gain:+.2f} points (best epoch)")
    out.append(f"run: {summary['run_dir']}  ({summary['device']}, {summary['precision']}, seed {summary['seed']})")
    return "\n".join(out)
