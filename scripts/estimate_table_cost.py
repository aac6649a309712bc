#!/usr/bin/env python
"""Training compute of a table sweep, counted, and the GPU-hours it means at an ASSUMED effective throughput.

    python scripts/estimate_table_cost.py configs/cifar100/tables/crd.yaml [--tflops 25 100]

Per run: 240 epochs x (50,000 training images x (teacher forward + 3 x student forward: forward + backward)
+ 10,000 test images x student forward), forward FLOPs per 32x32 image from torch.utils.flop_counter. Connector,
loss and optimizer FLOPs, pre-training epochs and data loading are left out. The hours are compute / throughput:
an estimate, not a measurement; `adakd bench --teacher T --student S` measures the steps/s of your machine.
"""
from __future__ import annotations

import argparse
import sys
from functools import cache
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from adakd.models import build_model  # noqa: E402
from adakd.tools.sweep import load_sweep  # noqa: E402

TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000


@cache
def forward_flops(name: str) -> int:
    model = build_model(name, num_classes=100).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 32, 32))
    return counter.get_total_flops()


def run_flops(config: dict) -> int:
    student = forward_flops(config["student"]["name"])
    teacher = forward_flops(config["teacher"]["name"]) if config.get("teacher") else 0
    return config["train"]["epochs"] * (TRAIN_IMAGES * (3 * student + teacher) + TEST_IMAGES * student)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep")
    parser.add_argument("--tflops", type=float, nargs="+", default=[25.0, 100.0],
                        help="assumed effective TFLOP/s of one GPU (default: 25 and 100)")
    args = parser.parse_args(argv)
    sweep = load_sweep(args.sweep)
    total = sum(run_flops(run.config) for run in sweep.runs)
    print(f"{sweep.name}: {len(sweep.runs)} runs, {total / 1e18:.1f} EFLOP ({total / len(sweep.runs) / 1e15:.1f} "
          "PFLOP per run on average)")
    for tflops in args.tflops:
        print(f"  at {tflops:g} TFLOP/s effective: {total / (tflops * 1e12) / 3600:.0f} GPU-hours (estimate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
