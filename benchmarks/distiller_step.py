"""What each distiller adds to a training step: its step time against KD's, on one pair, batch and numerics.

    python benchmarks/distiller_step.py                          # kd at vid ofd kdsvd, resnet32x4 -> resnet8x4, batch 64, bf16 + channels_last
    python benchmarks/distiller_step.py --precision fp32 --memory-format nchw --threads 1
    python benchmarks/distiller_step.py --methods kd kdsvd --compare-ref main   # + each loss as it was at git ref main
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/distiller_step.py --precision fp32 ...

One step is what training runs (the standard strategy's ``Phase.step``: the student's and the frozen
teacher's forward, the distiller, backward, the SGD step), built by ``adakd.tools.bench.Rig`` on
random CIFAR-shaped data held on the device, at the precision and memory format given (no probe:
the point is the same numerics for every method). Each distiller has its own rig from the same
weights; the rigs are timed window by window, interleaved (the order alternates every window), in
one process, so a shared machine's load hits all alike. Reported per distiller: the median images/s
over the windows with the quartiles, and its step time relative to KD's (the median over rounds of its
window time / KD's window time in the same round; 3.8x = a step 3.8 times as long as KD's).

``--compare-ref REF`` also times each distiller's loss module as it was at git ``REF`` (its classes
swapped into a second rig of the same weights, the rest of the code as checked out): the column
``new / ref`` is the median over rounds of the ref's window time / the current one's.

The JSON (``--out``) records the CPU class (model name, AMX / avx512_bf16 / AVX2, torch's kernel level,
any instruction-set cap), threads and load average: a ratio only means something with its machine.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

from adakd.losses.base import Distiller
from adakd.tools.bench import BenchCase, BenchSettings, PathSpec, Rig, environment, random_dataset, write_json

REPO = Path(__file__).resolve().parents[1]
METHODS = ["kd", "at", "vid", "ofd", "kdsvd"]


def cpu_class(env: dict[str, Any]) -> str:
    """'AMD EPYC ...; AVX512; avx512_bf16, avx2, no AMX' from :func:`adakd.tools.bench.environment`."""
    flags = env.get("cpu_flags", {})
    have = [f for f in ("avx512_bf16", "avx2") if flags.get(f)]
    have.append("AMX bf16" if flags.get("amx_bf16") else "no AMX")
    caps = env.get("isa_limits") or {}
    capped = f"; capped: {', '.join(f'{k}={v}' for k, v in sorted(caps.items()))}" if caps else ""
    return f"{env['cpu']}; {env.get('cpu_capability')}; {', '.join(have)}{capped}"


def module_at_ref(module: str, ref: str) -> types.ModuleType:
    """The source of ``adakd.losses.<module>`` at git ``ref``, executed as a sibling module (its relative
    imports resolve to the current package; its classes are not registered)."""
    path = f"src/adakd/losses/{module}.py"
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:{path}"], capture_output=True, text=True,
                            check=True).stdout
    mod = types.ModuleType(f"adakd.losses._{module}_at_ref")
    mod.__package__ = "adakd.losses"
    exec(compile(source.replace("@register_distiller\n", ""), f"{ref}:{path}", "exec"), mod.__dict__)
    return mod


def swap_to_ref(distiller: Distiller, ref: str) -> int:
    """Give every submodule of ``distiller`` whose class its loss module defines that class as at ``ref``
    (same attributes, the ref's methods); the number swapped."""
    module_name = type(distiller).__module__
    ref_module = module_at_ref(module_name.rsplit(".", 1)[1], ref)
    swapped = 0
    for sub in distiller.modules():
        if type(sub).__module__ == module_name and hasattr(ref_module, type(sub).__name__):
            sub.__class__ = getattr(ref_module, type(sub).__name__)
            swapped += 1
    return swapped


def build_rigs(args: argparse.Namespace, device: torch.device) -> dict[str, Rig]:
    settings = BenchSettings(teacher=args.teacher, student=args.student, batch_sizes=[args.batch_size], seed=args.seed)
    spec = PathSpec("fast", args.precision, args.memory_format == "channels_last", False, "-", "device", False,
                    "foreach/fused")
    data = random_dataset(max(settings.dataset_size, 2 * args.batch_size), (3, 32, 32), settings.num_classes, args.seed)
    rigs = {}
    for method in args.methods:
        rigs[method] = Rig(BenchCase(method, losses={method: {}}), settings, spec, args.batch_size, device, data)
        if args.compare_ref and method != "kd":
            ref_rig = Rig(BenchCase(method, losses={method: {}}), settings, spec, args.batch_size, device, data)
            if swap_to_ref(ref_rig.distiller, args.compare_ref):
                rigs[f"{method}@{args.compare_ref}"] = ref_rig
    return rigs


def measure(rigs: dict[str, Rig], windows: int, steps: int, warmup: int, log=print) -> dict[str, list[float]]:
    """Seconds per window of each rig, the rigs interleaved (order reversed every other round)."""
    seconds: dict[str, list[float]] = {name: [] for name in rigs}
    names = list(rigs)
    for r in range(warmup + windows):
        for name in (names if r % 2 == 0 else names[::-1]):
            elapsed, _ = rigs[name].window(steps)
            if r >= warmup:
                seconds[name].append(elapsed)
        log(f"round {r + 1}/{warmup + windows}" + (" (warm-up)" if r < warmup else ""))
    return seconds


def summarise(seconds: dict[str, list[float]], images_per_window: int, ref: str | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, times in seconds.items():
        rates = [images_per_window / s for s in times]
        q = statistics.quantiles(rates, n=4, method="inclusive") if len(rates) > 1 else [rates[0]] * 3
        row: dict[str, Any] = {"images_per_s": {"median": statistics.median(rates), "q1": q[0], "q3": q[2]},
                               "window_seconds": times}
        if "kd" in seconds:
            row["cost_vs_kd"] = statistics.median(s / k for k, s in zip(seconds["kd"], times))
        if ref and f"{name}@{ref}" in seconds:
            row["new_over_ref"] = statistics.median(o / s for o, s in zip(seconds[f"{name}@{ref}"], times))
        out[name] = row
    return out


def format_rows(rows: dict[str, dict[str, Any]], ref: str | None) -> str:
    head = "| distiller | images/s [q1, q3] | step time / KD's |" + (f" new / {ref} |" if ref else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        ips = r["images_per_s"]
        cells = [name, f"{ips['median']:.1f} [{ips['q1']:.1f}, {ips['q3']:.1f}]",
                 f"{r['cost_vs_kd']:.2f}x" if "cost_vs_kd" in r else "-"]
        if ref:
            cells.append(f"{r['new_over_ref']:.2f}x" if "new_over_ref" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=METHODS, help="distillers (kd first: the baseline)")
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--memory-format", choices=["channels_last", "nchw"], default="channels_last")
    p.add_argument("--windows", type=int, default=5, help="timed rounds (the median is over these)")
    p.add_argument("--steps", type=int, default=2, help="steps per window")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    p.add_argument("--compare-ref", default=None, metavar="REF", help="also time each loss as it was at git REF")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.windows < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--windows and --steps must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = environment(device)
    print(f"CPU: {cpu_class(env)}; {torch.get_num_threads()} thread(s); load average {env.get('load_average')}",
          flush=True)
    rigs = build_rigs(args, device)
    start = time.perf_counter()
    seconds = measure(rigs, args.windows, args.steps, args.warmup, log=lambda m: print(m, file=sys.stderr, flush=True))
    rows = summarise(seconds, args.batch_size * args.steps, args.compare_ref)
    print(f"{args.teacher} -> {args.student}, batch {args.batch_size}, {args.precision} + {args.memory_format}, "
          f"{args.windows} windows x {args.steps} steps, {time.perf_counter() - start:.0f} s")
    print(format_rows(rows, args.compare_ref))
    result = {"settings": vars(args) | {"out": str(args.out) if args.out else None}, "cpu_class": cpu_class(env),
              "environment": env | {"load_average_after": environment(device).get("load_average")}, "results": rows}
    if args.out:
        write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
