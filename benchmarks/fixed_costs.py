"""Where a run's wall time goes besides its training steps (issue 26, item 3), from its summary.json.

    python benchmarks/fixed_costs.py RUN_DIR [RUN_DIR ...]                      # time_s of finished runs
    python benchmarks/fixed_costs.py RUN_DIR --epochs 15 --eval-every 1 5 15    # the same run at N epochs
    python benchmarks/fixed_costs.py --imports                                  # import time per package

A run's ``time_s`` (engine/trainer.py ``Trainer.time_breakdown``): startup (process start to the trainer),
setup, teacher (recipe/load), probe, teacher_eval, train_steps, eval, checkpoint, other; fixed_share =
1 - train_steps / total. ``--epochs`` projects a short measured run to N epochs: the per-run parts stay, the
steps scale with the epochs, evaluations cost the measured seconds per evaluation (count from metrics.jsonl)
times ceil-ish N / k (+ the last epoch), checkpoints the measured seconds per epoch. ``--imports`` runs
``python -X importtime -c "import adakd.api"`` (what ``adakd train`` imports) and sums self times by package.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ORDER = ("startup", "setup", "teacher", "probe", "teacher_eval", "train_steps", "eval", "checkpoint", "other")


def load(run_dir: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((run_dir / "summary.json").read_text())
    if "time_s" not in summary:
        raise SystemExit(f"{run_dir}: summary.json has no time_s (a run from before the breakdown existed)")
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return summary, [r for r in lines if r.get("kind", "epoch") == "epoch"]


def evaluations(epochs: int, every: int) -> int:
    """Epochs evaluated in one phase of ``epochs`` with ``train.eval_every = every`` (the last always)."""
    return len({e for e in range(1, epochs + 1) if e % every == 0 or e == epochs})


def project(time_s: dict, epochs_run: int, evals_run: int, epochs: int, every: int) -> dict:
    per_epoch = time_s["train_steps"] / epochs_run
    per_eval = time_s.get("eval", 0.0) / max(evals_run, 1)
    per_ckpt = time_s.get("checkpoint", 0.0) / epochs_run
    out = {k: time_s.get(k, 0.0) for k in ("startup", "setup", "teacher", "probe", "teacher_eval", "other")}
    out.update(train_steps=per_epoch * epochs, eval=per_eval * evaluations(epochs, every), checkpoint=per_ckpt * epochs)
    out["total"] = sum(out.values())
    out["fixed_share"] = 1.0 - out["train_steps"] / out["total"]
    return out


def row(label: str, t: dict) -> str:
    cells = " | ".join(f"{t.get(k, 0.0):.1f}" for k in ORDER)
    return f"| {label} | {cells} | {t['total']:.1f} | **{100 * t['fixed_share']:.1f}%** |"


def header() -> str:
    return "| run | " + " | ".join(ORDER) + " | total | fixed share |\n|" + "---|" * (len(ORDER) + 3)


def import_times() -> list[tuple[str, float]]:
    """Self import seconds by top-level package of ``import adakd.api`` in a fresh interpreter."""
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import adakd.api"], env=env,
                         capture_output=True, text=True, check=True).stderr
    per: Counter[str] = Counter()
    for m in re.finditer(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", err):
        per[m[2].split(".")[0]] += int(m[1]) / 1e6
    return per.most_common()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--epochs", type=int, help="project each run to this many epochs")
    parser.add_argument("--eval-every", type=int, nargs="+", default=[1])
    parser.add_argument("--imports", action="store_true", help="import seconds of `adakd train`'s modules")
    args = parser.parse_args()
    if args.runs:
        print(header())
    for run_dir in args.runs:
        summary, epochs = load(run_dir)
        t = summary["time_s"]
        print(row(f"{run_dir.name} (measured, {len(epochs)} epochs)", t))
        if args.epochs:
            evals = sum(1 for r in epochs if "test_top1" in r)
            for k in args.eval_every:
                print(row(f"{run_dir.name} at {args.epochs} epochs, eval_every {k}",
                          project(t, len(epochs), evals, args.epochs, k)))
    if args.imports:
        times = import_times()
        total = sum(s for _, s in times)
        print(f"import adakd.api: {total:.2f} s of module bodies; by package: "
              + ", ".join(f"{name} {s:.2f}" for name, s in times[:8]))


if __name__ == "__main__":
    main()
