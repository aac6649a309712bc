#!/usr/bin/env python
"""What a lent GPU checks, end to end (issue 29, item 5). No line of adakd had run on a GPU before it.

    ADAKD_DATA=DIR python scripts/gpu_check.py [--out DIR] [--full]     # on a CUDA machine
    ADAKD_DATA=DIR python scripts/gpu_check.py --stages readiness,precision   # part of it (one call's time)
    ADAKD_DATA=DIR python scripts/gpu_check.py --dry-run                # its plumbing, on this CPU

DIR holds fashion-mnist/ (the four .gz files, 30 MB): a machine that reaches nothing outside needs them
copied beside the checkout. On an H100 the default stages should take minutes (not measured: no GPU run yet).

Stages (each logged to OUT/<stage>.log; a failed stage does not stop the next):

1. ``readiness``: ``pytest --device cuda tests/test_gpu_readiness.py tests/test_losses_learn.py``: one step of
   every distiller under every strategy on the GPU (a host tensor without ``device=`` crashes there; the host
   syncs are recorded against the allow-list), and every distiller's learns test (fp32 and bf16) on the GPU;
2. ``precision``: every distiller's loss under the standard strategy in fp32, bf16 and fp16 autocast on one
   batch (finite? how far from fp32?) and one fp16 step through ``torch.amp.GradScaler`` (the road of item 4);
3. ``ddp``: with 2+ GPUs ``scripts/gpu_ddp_check.sh`` (the gloo DDP tests, then 2 GPUs with NCCL against
   1 GPU); with one GPU a 1-process torchrun training on ``cuda`` (NCCL process group, sync BN);
4. ``bench``: ``adakd bench --device cuda`` (KD, batch 64 and 256; the adaptive suite), JSON kept;
5. ``train``: the student recipe for one epoch with ``precision: auto`` (the fast-path probe picks on this GPU);
6. ``suite`` (with ``--full``): the whole test suite with ``--device cuda``.

Everything goes to OUT (``--out``, else ``$OUT/gpu_check``, else ``./gpu_check_out``): ``results.json`` with
the GPU's name (``torch.cuda.get_device_name()``), torch/CUDA/NCCL versions and every stage's figures and
status, and ``results.md``, the same as a table. Exit status: 0 if every stage passed, 1 if one failed,
2 if there is no CUDA device (without ``--dry-run``).

``--dry-run`` runs every stage on the CPU with tiny settings (gloo for the 1-process torchrun), so the
script's plumbing is checked where no GPU is; its figures say nothing about a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
STAGES = ("readiness", "precision", "ddp", "bench", "train", "suite")


def fail(message: str) -> int:
    print(f"gpu_check: {message}", file=sys.stderr)
    return 2


class Stages:
    """Runs the stages, each logged to OUT/<name>.log, and collects their results."""

    def __init__(self, out: Path, env: dict[str, str]) -> None:
        self.out, self.env = out, env
        self.results: dict[str, dict[str, Any]] = {}

    def command(self, name: str, cmd: list[str], timeout: int, env: dict[str, str] | None = None) -> dict[str, Any]:
        """``cmd`` in the repository root; its output to OUT/<name>.log; returns rc, seconds and the tail."""
        t0 = time.perf_counter()
        log = self.out / f"{name}.log"
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            try:
                rc = subprocess.run(cmd, cwd=REPO, env={**self.env, **(env or {})}, stdout=f, stderr=subprocess.STDOUT,
                                    timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = 124
        tail = log.read_text().splitlines()[-5:]
        return {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "tail": tail}

    def run(self, name: str, body: Callable[[], dict[str, Any]]) -> None:
        print(f"[gpu_check] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            result = body()
        except Exception as exc:  # a stage's crash is its result; the next stages still run
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        result.setdefault("seconds", round(time.perf_counter() - t0, 1))
        self.results[name] = result
        print(f"[gpu_check] {name}: {'ok' if result.get('ok') else 'FAILED'} ({result['seconds']} s)", flush=True)


# ----------------------------------------------------------------------------------------------- stages
def environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"torch": torch.__version__, "device": device, "python": sys.version.split()[0]}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update({"gpu": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(),
                    "capability": f"{props.major}.{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1),
                    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                    "nccl": ".".join(map(str, torch.cuda.nccl.version())), "bf16": torch.cuda.is_bf16_supported()})
    else:
        env.update({"gpu": None, "gpus": 0})
    return env


def precision_smoke(device_name: str, batch_size: int = 32) -> dict[str, Any]:
    """Each distiller's loss (standard strategy, one batch) in fp32, bf16 and fp16 autocast, and one fp16 step
    through a GradScaler: {distiller: {bf16_rel, fp16_rel, fp16_finite, scaler_step}}."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from test_gpu_readiness import OPTIONS, models, val_loader  # the readiness test's tiny pair and options

    import adakd.losses  # noqa: F401
    from adakd.losses.base import DistillContext
    from adakd.losses.build import build_distiller
    from adakd.registry import DISTILLERS, STRATEGIES
    from adakd.strategies import StrategyContext

    device = torch.device(device_name)
    batch = val_loader(device).batch(torch.arange(batch_size, device=device) % 32)
    ctx = DistillContext(labels=batch.y, indices=batch.index, epoch=0, step=0, epochs_total=1, progress=0.0)
    out: dict[str, Any] = {}
    for name in sorted(e.name for e in DISTILLERS.entries()):
        student, teacher = models(device)
        d = build_distiller({name: OPTIONS.get(name, {})}, student, teacher, num_samples=32).to(device)
        strategy = STRATEGIES.build("standard", StrategyContext(
            student=student, teacher=teacher, distiller=d, ce_weight=1.0, device=device, precision="fp32",
            num_classes=10))
        losses = {}
        for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
            torch.manual_seed(0)  # CRD's negatives, dropout: the same draws for each precision
            cast = contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
            with torch.no_grad(), cast:
                losses[precision] = float(strategy.compute_loss(batch, ctx)[0])
        ref = losses["fp32"]
        row = {k: v for k, v in losses.items()}
        for p in ("bf16", "fp16"):
            row[f"{p}_rel"] = abs(losses[p] - ref) / max(abs(ref), 1e-12) if math.isfinite(losses[p]) else None
        # one fp16 step with a gradient scaler: does it step, and where does the scale go?
        scaler = torch.amp.GradScaler(device.type, init_scale=2.0**16)
        params = [p for m in strategy.trainable_modules() for p in m.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.01)
        with torch.autocast(device.type, dtype=torch.float16):
            loss = strategy.compute_loss(batch, ctx)[0]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        row["scaler_scale_after"] = float(scaler.get_scale())
        row["scaler_stepped"] = scaler.get_scale() >= 2.0**16  # the scale drops when the step was skipped
        out[name] = row
    bad = sorted(n for n, r in out.items() if not all(math.isfinite(r[p]) for p in ("fp32", "bf16")))
    return {"ok": not bad, "nonfinite_fp32_or_bf16": bad,
            "fp16_nonfinite": sorted(n for n, r in out.items() if not math.isfinite(r["fp16"])),
            "fp16_scaler_skipped": sorted(n for n, r in out.items() if not r["scaler_stepped"]),
            "distillers": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="output folder (default $OUT/gpu_check, else ./gpu_check_out)")
    parser.add_argument("--dry-run", action="store_true", help="every stage on this CPU, tiny: checks the plumbing")
    parser.add_argument("--full", action="store_true", help="also the whole test suite with --device cuda")
    parser.add_argument("--stages", default=None,
                        help=f"comma-separated subset of {','.join(STAGES)} (default: all; `suite` needs --full), "
                             "to fit a device call's time limit: the results of each call go to the same OUT")
    args = parser.parse_args(argv)
    chosen = STAGES if args.stages is None else tuple(x.strip() for x in args.stages.split(","))
    if set(chosen) - set(STAGES):
        return fail(f"unknown stage(s) {sorted(set(chosen) - set(STAGES))}: choose from {', '.join(STAGES)}.")

    import torch

    if not os.environ.get("ADAKD_DATA"):
        return fail("set ADAKD_DATA to the folder holding fashion-mnist/ (the tests and trainings read it).")
    if not args.dry_run and not torch.cuda.is_available():
        return fail(f"no CUDA device is visible to torch {torch.__version__} (torch.cuda.is_available() is "
                    "False): run this on a GPU machine with a CUDA build of torch, or pass --dry-run to check "
                    "the script itself on the CPU.")
    device = "cpu" if args.dry_run else "cuda"
    out = Path(args.out or (Path(os.environ["OUT"]) / "gpu_check" if os.environ.get("OUT") else "gpu_check_out"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "ADAKD_TEST_DEVICE": device}
    if args.dry_run:
        env["OMP_NUM_THREADS"] = "1"
    stages = Stages(out, env)
    py = sys.executable
    info = environment(device)
    print(f"[gpu_check] {info.get('gpu') or 'CPU (dry run)'}, torch {info['torch']}; results in {out}", flush=True)

    def fresh_run_dir(name: str) -> Path:
        """OUT/runs/<name>-<time>: the runs are kept with the figures, a rerun never meets an old one."""
        return out / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"

    def readiness() -> dict[str, Any]:
        tests = ["tests/test_gpu_readiness.py"] + ([] if args.dry_run else ["tests/test_losses_learn.py"])
        r = stages.command("readiness", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--device", device,
                                         *tests], timeout=1800)
        return {"ok": r["rc"] == 0, **r}

    def precision() -> dict[str, Any]:
        return precision_smoke(device)

    def ddp() -> dict[str, Any]:
        if device == "cuda" and torch.cuda.device_count() >= 2:
            r = stages.command("ddp", ["bash", "scripts/gpu_ddp_check.sh"], timeout=1800)
            return {"ok": r["rc"] == 0, "mode": "2 GPUs, NCCL (scripts/gpu_ddp_check.sh)", **r}
        run_dir = fresh_run_dir("ddp")
        r = stages.command("ddp", [py, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--standalone", "-m",
                                   "adakd", "train", "configs/fashion_mnist/student.yaml", f"device={device}",
                                   "train.epochs=1", "data.train_subset=512" if args.dry_run else "data.train_subset=4096",
                                   "train.sync_batchnorm=true", "train.precision=fp32", "progress=false",
                                   f"run_dir={run_dir}"], timeout=900)
        summary = run_dir / "summary.json"
        top1 = json.loads(summary.read_text()).get("last_top1") if summary.is_file() else None
        mode = "1 process, gloo (dry run)" if args.dry_run else "1 GPU: 1-process torchrun, NCCL"
        return {"ok": r["rc"] == 0 and top1 is not None, "mode": mode, "last_top1": top1, **r}

    def bench() -> dict[str, Any]:
        figures, ok = {}, True
        runs = {"kd": ["--batch-size", "64", "256"], "adaptive": ["--suite", "adaptive", "--batch-size", "64"]}
        if args.dry_run:  # tiny models, one window: the plumbing only
            runs = {"kd": ["--teacher", "resnet8", "--student", "resnet8", "--batch-size", "8", "--warmup", "1",
                           "--repeats", "1", "--num-classes", "10", "--image-size", "16"]}
        for name, extra in runs.items():
            file = out / f"bench_{name}.json"
            r = stages.command("bench", [py, "-m", "adakd", "bench", "--device", device, *extra, "--out", str(file)],
                               timeout=1200)
            ok = ok and r["rc"] == 0 and file.is_file()
            figures[name] = json.loads(file.read_text()) if file.is_file() else r
        return {"ok": ok, **figures}

    def train() -> dict[str, Any]:
        run_dir = fresh_run_dir("train")
        r = stages.command("train", [py, "-m", "adakd", "train", "configs/fashion_mnist/student.yaml",
                                     f"device={device}", "train.epochs=1", "train.precision=auto", "progress=false",
                                     *(["data.train_subset=512"] if args.dry_run else []), f"run_dir={run_dir}"],
                           timeout=1200)
        summary = run_dir / "summary.json"
        s = json.loads(summary.read_text()) if summary.is_file() else {}
        keep = ("last_top1", "precision", "channels_last", "images_per_second", "train_seconds")
        return {"ok": r["rc"] == 0 and bool(s), **{k: s.get(k) for k in keep}, **r}

    def suite() -> dict[str, Any]:
        r = stages.command("suite", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--device", device],
                           timeout=3600)
        return {"ok": r["rc"] == 0, **r}

    bodies = {"readiness": readiness, "precision": precision, "ddp": ddp, "bench": bench, "train": train,
              "suite": suite}
    previous = out / "results.json"  # an earlier call's stages (--stages), kept unless rerun now
    if previous.is_file():
        stages.results.update(json.loads(previous.read_text()).get("stages", {}))
    for name in chosen:
        if name == "suite" and not (args.full or args.stages):
            continue
        stages.run(name, bodies[name])
        write_results(out, info, stages.results, args.dry_run)
    failed = [n for n in chosen if n in stages.results and not stages.results[n].get("ok")]
    print(f"[gpu_check] {'all stages passed' if not failed else 'FAILED: ' + ', '.join(failed)}; see {out}")
    return 1 if failed else 0


def write_results(out: Path, info: dict[str, Any], results: dict[str, Any], dry_run: bool) -> None:
    """OUT/results.json (everything) and OUT/results.md (a line per stage), rewritten after each stage."""
    data = {"environment": info, "dry_run": dry_run, "stages": results}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(out / "results.json")
    lines = [f"# gpu_check: {info.get('gpu') or 'CPU dry run'} (torch {info['torch']}, CUDA {info.get('cuda')})", "",
             "| stage | ok | seconds | notes |", "|---|---|---|---|"]
    for name, r in results.items():
        notes = r.get("error") or r.get("mode") or ""
        if name == "precision" and "distillers" in r:
            worst = max(((v["fp16_rel"] or math.inf), k) for k, v in r["distillers"].items())
            notes = (f"fp16 non-finite: {r['fp16_nonfinite'] or 'none'}; scaler skipped: "
                     f"{r['fp16_scaler_skipped'] or 'none'}; largest fp16 loss difference {worst[0]:.2g} ({worst[1]})")
        if name == "train":
            notes = f"probe picked {r.get('precision')}, top-1 {r.get('last_top1')}, {r.get('images_per_second')} img/s"
        lines.append(f"| {name} | {'yes' if r.get('ok') else '**no**'} | {r.get('seconds')} | {notes} |")
    tmp = out / "results.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out / "results.md")


if __name__ == "__main__":
    sys.exit(main())
