"""The numbers of benchmarks/RESULTS.md: training-step throughput, eager baseline vs fast path.

    python benchmarks/train_step.py                       # KD resnet32x4 -> resnet8x4, batch 64 and 128
    python benchmarks/train_step.py --adaptive            # + SAKD / ABL (search, retrain) over KD, AEKT over DKD
    python benchmarks/train_step.py --threads 1 2 --repeats 9 --out benchmarks/results
    python benchmarks/train_step.py --zoo --batch-size 64   # every distiller of the zoo, eager vs fast
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/train_step.py ...   # as an AVX2-only CPU

Runs ``adakd bench`` (adakd.tools.bench.run_bench) for each thread count given, prints its tables and
writes one JSON per run into ``--out``. The KD table has the eager baseline, the fast path the
training probe picks (engine/probe.py) and the fast path under every other precision x memory
format (``--no-candidates``: the pick alone); the JSON records the CPU model and flags (AMX,
AVX-512, AVX2), torch's CPU capability, threads and torch version. Unset ``ADAKD_PRECISION`` /
``ADAKD_CHANNELS_LAST`` first: they replace the probe, here as in training. The two paths are timed window by window, interleaved, in
one process, so background load hits both alike; the load average before and after is recorded
with every result. For numbers to quote, use a quiet machine (load average well below the core
count): on an oversubscribed machine 2 OpenMP threads stall each other and 1 thread is steadier.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from adakd.tools.bench import SUITES, BenchCase, BenchSettings, format_table, progress_log, run_bench, write_json
from adakd.registry import DISTILLERS

#: Distillers that need equal stage widths, which resnet32x4 -> resnet8x4 does not have (a ShapeError).
NEEDS_EQUAL_WIDTHS = {"fsp"}


def zoo_cases() -> list[BenchCase]:
    """One case per registered distiller (CRD: its CIFAR recipe with KD; FT/AB/FSP: the main stage)."""
    import adakd.losses  # noqa: F401  (registers the distillers)

    cases = []
    for name in DISTILLERS.names():
        if name in NEEDS_EQUAL_WIDTHS or name.startswith("user_"):
            continue
        losses = {"crd": {"num_negatives": 4096}, "kd": {}} if name == "crd" else {name: {}}
        cases.append(BenchCase(name if name != "crd" else "crd+kd", losses=losses))
    return cases

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--threads", type=int, nargs="+", default=[0], help="torch threads per run (0: torch's choice)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also compile the fast path (minutes on CPU)")
    parser.add_argument("--adaptive", action="store_true", help="also the adaptive-strategy overhead suite (fast path)")
    parser.add_argument("--zoo", action="store_true",
                        help="every distiller of the zoo (one case each, the first batch size) instead of KD alone")
    parser.add_argument("--no-candidates", dest="candidates", action="store_false",
                        help="time the probe's pick only, not every precision x memory format beside it")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for threads in args.threads:
        settings = BenchSettings(batch_sizes=args.batch_size, threads=threads or None, repeats=args.repeats,
                                 warmup=args.warmup, device=args.device, compile=args.compile,
                                 candidates=args.candidates)
        if args.zoo:
            settings.batch_sizes = [args.batch_size[0]]
        result = run_bench(settings, zoo_cases() if args.zoo else SUITES["kd"], log=progress_log)
        print(format_table(result), "\n", flush=True)
        write_json(result, args.out / f"{'zoo' if args.zoo else 'kd'}-{stamp}-t{threads}.json")
        if args.adaptive:
            settings.paths = ("fast",)  # the probe's pick, per case
            settings.candidates = False
            settings.batch_sizes = [args.batch_size[0]]
            result = run_bench(settings, SUITES["adaptive"], log=progress_log)
            print(format_table(result), "\n", flush=True)
            write_json(result, args.out / f"adaptive-{stamp}-t{threads}.json")


if __name__ == "__main__":
    main()
