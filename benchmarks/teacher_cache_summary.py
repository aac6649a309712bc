"""Collect the issue-18 runs (results/teacher-cache/) into results/teacher-cache/accuracy.md: final and best
test top-1 of KD and DKD with the live teacher, the cache at K = epochs and at K = 2, per seed and mean +- std."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "results" / "teacher-cache"


def runs() -> list[tuple[str, str, int, dict]]:
    out = []
    for summary in ROOT.rglob("summary.json"):
        if "retime" in str(summary):  # the re-timed sweep repeats seed 0's runs (timing only)
            continue
        s = json.loads(summary.read_text())
        name = summary.parent.name
        method = "dkd" if "dkd" in name else "kd" if "-kd-" in name or name.startswith("kd-") else None
        if method is None:
            continue
        if "k2" in name:
            mode = "K=2"
        elif "cached" in name or "k_epochs" in name:
            mode = "K=epochs"
        else:
            mode = "live"
        seed = int(name.rsplit("s", 1)[1])
        out.append((method, mode, seed, s))
    return out


def main() -> None:
    rows = sorted(runs(), key=lambda r: (r[0], r[1], r[2]))
    lines = ["| method | teacher | seeds | last top-1 per seed | mean +- std | train s per run |", "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list] = {}
    for method, mode, seed, s in rows:
        groups.setdefault((method, mode), []).append((seed, s))
    for (method, mode), items in sorted(groups.items()):
        last = [float(s["last_top1"]) for _, s in items]
        secs = [float(s.get("train_seconds") or 0) for _, s in items]
        sd = statistics.stdev(last) if len(last) > 1 else 0.0
        lines.append(f"| {method} | {mode} | {','.join(str(k) for k, _ in items)} | "
                     f"{', '.join(f'{v:.2f}' for v in last)} | {statistics.mean(last):.2f} +- {sd:.2f} | "
                     f"{statistics.mean(secs):.0f} |")
    text = "\n".join(lines) + "\n"
    (ROOT / "accuracy.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
