"""Does the fast path change accuracy? Fashion-MNIST KD runs with it off and on, several seeds each.

    export ADAKD_DATA=$PWD/../shared/data
    python benchmarks/fast_path_accuracy.py                                   # 3 seeds x {fp32, bf16}: the full check
    python benchmarks/fast_path_accuracy.py --settings fp32 bf16 compile      # + torch.compile (slow to compile on CPU)
    python benchmarks/fast_path_accuracy.py --teacher-checkpoint RUN/checkpoints/student.pt   # reuse a teacher
    python benchmarks/fast_path_accuracy.py --tiny                            # a minute: proves the script runs;
                                                                              # its numbers mean nothing

The recipe is ``configs/fashion_mnist/kd.yaml`` (ResNet-20 -> ResNet-8, T = 4, 10% subset, 30 epochs;
``--config`` and ``key=value`` overrides change it). Every run of a seed uses the same teacher
checkpoint and the same data order, so the settings differ only in how the student is trained:

  fp32     train.precision=fp32 train.channels_last=false          the fast path off (eager numerics)
  bf16     train.precision=bf16 train.channels_last=true           the fast path (bf16 autocast, channels_last)
  compile  bf16 + train.compile=true                               the opt-in compiled path

(the data pipeline is the device-resident loader on every setting; its equivalence to torchvision's
transforms is tested in tests/test_data.py.) Runs are resumable (``resume=true``): re-running the
script continues unfinished runs and skips finished ones. Writes OUT/results.json and prints, per
setting, the mean +- std over seeds of the final and best test top-1, images/s, and the difference
to fp32 with its standard error: "same" when |diff| <= 2 SE, i.e. inside the seed noise.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import adakd
from adakd.config import load_config

REPO = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, list[str]] = {
    "fp32": ["train.precision=fp32", "train.channels_last=false", "train.compile=false"],
    "bf16": ["train.precision=bf16", "train.channels_last=true", "train.compile=false"],
    "compile": ["train.precision=bf16", "train.channels_last=true", "train.compile=true"],
}
#: --tiny: a smoke test of the script (seconds per run), not a measurement.
TINY = ["train.epochs=1", "data.train_subset=256", "data.test_subset=500", "data.batch_size=64",
        "data.eval_batch_size=500", "student.kwargs={widths: [8, 16, 16]}"]
TINY_TEACHER = ["train.epochs=1", "data.train_subset=512", "data.test_subset=500", "data.batch_size=64",
                "data.eval_batch_size=500", "progress=false"]


def tiny_teacher(config: Path, out: Path) -> Path:
    """Train the recipe's teacher for a moment (``--tiny`` without ``--teacher-checkpoint``)."""
    teacher = load_config(config).teacher
    assert teacher is not None and teacher.recipe, f"{config} has no teacher recipe"
    cfg = load_config(teacher.recipe, TINY_TEACHER + [f"run_dir={out / 'tiny-teacher'}", "resume=true"])
    summary = adakd.train(cfg, log=lambda m: None)
    return Path(summary["run_dir"]) / "checkpoints" / "student.pt"


def run_one(config: Path, overrides: list[str], setting: str, seed: int, out: Path) -> dict[str, Any]:
    run_dir = out / setting / f"seed{seed}"
    cfg = load_config(config, overrides + SETTINGS[setting] + [
        f"seed={seed}", f"run_dir={run_dir}", "compare_scratch=false", "progress=false", "resume=true"])
    start = time.perf_counter()
    summary = adakd.train(cfg, log=lambda m: None)
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)
    summary["setting"] = setting
    return summary


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def compare(runs: list[dict[str, Any]], reference: str = "fp32") -> list[dict[str, Any]]:
    """Per setting: mean/std of last and best top-1 and images/s; difference of last top-1 to ``reference``."""
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_setting.setdefault(r["setting"], []).append(r)
    rows = []
    ref = [r["last_top1"] for r in by_setting.get(reference, [])]
    for setting, group in by_setting.items():
        last = [r["last_top1"] for r in group]
        row: dict[str, Any] = {"setting": setting, "seeds": [r["seed"] for r in group]}
        row["last_top1"] = _mean_std(last)
        row["best_top1"] = _mean_std([r["best_top1"] for r in group])
        row["images_per_second"] = _mean_std([r["images_per_second"] for r in group])
        if setting != reference and len(ref) > 1 and len(last) > 1:
            diff = statistics.fmean(last) - statistics.fmean(ref)
            se = math.sqrt(statistics.variance(last) / len(last) + statistics.variance(ref) / len(ref))
            row["diff_to_" + reference] = diff
            row["se"] = se
            row["verdict"] = "same (inside seed noise)" if abs(diff) <= 2 * se + 1e-9 else "DIFFERENT"
        rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    out = [f"{'setting':<8} {'seeds':<10} {'last top-1':>15} {'best top-1':>15} {'images/s':>15}  vs fp32"]
    for r in rows:
        vs = f"{r['diff_to_fp32']:+.2f} (SE {r['se']:.2f}): {r['verdict']}" if "diff_to_fp32" in r else ""
        out.append(f"{r['setting']:<8} {','.join(map(str, r['seeds'])):<10} "
                   f"{r['last_top1'][0]:>7.2f} +- {r['last_top1'][1]:<5.2f} {r['best_top1'][0]:>7.2f} +- "
                   f"{r['best_top1'][1]:<5.2f} {r['images_per_second'][0]:>7.0f} +- {r['images_per_second'][1]:<5.0f}  {vs}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the recipe, e.g. train.epochs=10")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "fashion_mnist" / "kd.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=["fp32", "bf16"])
    parser.add_argument("--teacher-checkpoint", default=None, help="a trained teacher (else the recipe's, cached)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "fast-path-accuracy")
    parser.add_argument("--tiny", action="store_true", help="tiny settings: checks the script, measures nothing")
    args = parser.parse_args()
    overrides = list(args.overrides)
    if args.tiny:
        overrides = TINY + overrides
        if not args.teacher_checkpoint:
            args.teacher_checkpoint = str(tiny_teacher(args.config, args.out))
    if args.teacher_checkpoint:
        overrides += ["teacher.recipe=null", f"teacher.checkpoint={Path(args.teacher_checkpoint).expanduser()}"]
    runs = []
    for seed in args.seeds:  # seeds outer: an interrupted script has every setting for the first seeds
        for setting in args.settings:
            summary = run_one(args.config, overrides, setting, seed, args.out)
            print(f"{setting} seed {seed}: last top-1 {summary['last_top1']:.2f}%, best {summary['best_top1']:.2f}%, "
                  f"{summary['images_per_second']:.0f} img/s, {summary['wall_seconds']:.0f} s", flush=True)
            runs.append(summary)
    rows = compare(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"config": str(args.config), "overrides": overrides,
                                                       "runs": runs, "comparison": rows}, indent=2))
    print(format_rows(rows))
    print(f"-> {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
