"""Tune DKD's beta and T with TPE + median pruning, spend the same budget (epochs trained) on a grid, then
train the chosen config with 3 seeds and test it on the whole test split. Writes OUT/results.json.

    python studies/tune-dkd/measure.py [--out /tmp/tune-dkd] [key=value ...]   (overrides of the base config)

Wall times include each trial's start-up (data, teacher loading); the teacher recipe is trained (or
found in the cache) before either clock starts and is not counted in either budget.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIG = REPO / "configs" / "fashion_mnist" / "dkd.yaml"
#: The scaled-down recipe that fits the measurement window (say so wherever the numbers are quoted).
BASE = ["data.train_subset=1500", "data.val_fraction=0.05", "data.test_subset=2000", "train.epochs=3",
        "train.eval_every=3", "losses.dkd.warmup_epochs=1", "train.precision=bf16", "train.channels_last=false",
        f"teacher.recipe={HERE / 'teacher.yaml'}"]


def adakd(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "adakd", *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"adakd {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def study_stats(folder: Path) -> dict:
    import optuna

    from adakd.tools.tune.study import driver_url

    meta = json.loads((folder / "tune.json").read_text())
    study = optuna.load_study(study_name=meta["study"], storage=driver_url(meta["storage"]))
    trials = study.get_trials(deepcopy=False)
    best = study.best_trial
    return {"trials": len(trials), "states": {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED",
            "FAIL")}, "epochs": sum(len(t.intermediate_values) for t in trials), "best_trial": best.number,
            "best_val_top1": best.value, "best_params": best.params}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/tune-dkd")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--tpe-trials", default=None, help="fewer TPE trials than the space file's (smoke tests)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = Path(args.out)
    base = BASE + [f"output_dir={out / 'runs'}", "progress=false"] + list(args.overrides)
    epochs = int(next(o for o in reversed(base) if o.startswith("train.epochs=")).split("=")[1])
    results: dict = {"config": args.config, "overrides": base}
    t0 = time.time()  # the teacher: trained once by its recipe (or found in the cache), counted in neither budget
    from adakd.config import load_config
    from adakd.tools.tune.study import prepare_teacher

    prepare_teacher(load_config(args.config, base), log=lambda m: print(m, file=sys.stderr, flush=True))
    results["teacher_seconds"] = round(time.time() - t0, 1)

    t0 = time.time()
    adakd("tune", args.config, *base, "--space", str(HERE / "space_tpe.yaml"), "--out", str(out / "tpe"),
          *(["--trials", args.tpe_trials] if args.tpe_trials else []))
    results["tpe"] = {**study_stats(out / "tpe"), "wall_seconds": round(time.time() - t0, 1)}
    grid_trials = max(1, math.floor(results["tpe"]["epochs"] / epochs))  # the same number of epochs trained
    print(json.dumps(results, indent=1), file=sys.stderr, flush=True)

    t0 = time.time()
    adakd("tune", args.config, *base, "--space", str(HERE / "space_grid.yaml"), "--out", str(out / "grid"),
          "--trials", str(grid_trials))
    results["grid"] = {**study_stats(out / "grid"), "wall_seconds": round(time.time() - t0, 1)}
    print(json.dumps(results, indent=1), file=sys.stderr, flush=True)

    chosen = out / "tpe" / "best.yaml"  # the tuned config, tested on the whole test split with 3 seeds
    results["chosen_test_top1"] = []
    for seed in (0, 1, 2):
        summary = json.loads(adakd("train", str(chosen), f"seed={seed}", "data.test_subset=null",
                                   f"run_dir={out / 'chosen' / f'seed{seed}'}", "--json"))
        results["chosen_test_top1"].append(summary["last_top1"])
    for name in ("tpe", "grid"):
        adakd("report", str(out / name))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
