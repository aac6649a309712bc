"""Step time with the teacher-output cache vs the live teacher, side by side in one process (issue 18).

    python benchmarks/teacher_cache_step.py [--steps 6] [--methods kd dkd aekt dist crd rkd] [--out FILE]
    python benchmarks/teacher_cache_step.py --pair fmnist --batch 128 --methods kd dkd aekt dist ls   # the sweep's pair

resnet32x4 -> resnet8x4 on 32x32 RGB (CIFAR-100 shapes, 100 classes; random pixels), batch 64, fp32, standard
strategy. The cached step reads the teacher's logits/pooled from a real cache (built here over 512 random
images, memory-mapped fp16) through the same TeacherFeed the trainer uses; the live step runs the teacher.
Live and cached steps alternate (one of each per round) so that load drifts hit both alike; medians reported.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from adakd.data.loader import DeviceLoader
from adakd.engine import teacher_cache as tc
from adakd.engine.components import ComponentSpec, build_components, build_phase_optimizer
from adakd.config import OptimizerConfig
from adakd.losses.base import DistillContext
from adakd.models import build_model

LOSSES = {"kd": {"kd": {"temperature": 4.0}}, "dkd": {"dkd": {}}, "aekt": {"aekt": {}}, "dist": {"dist": {}},
          "crd": {"crd": {}}, "rkd": {"rkd": {}}, "ls": {"ls": {}}}
#: --pair: (teacher, student, channels, image size, classes)
PAIRS = {"cifar": ("resnet32x4", "resnet8x4", 3, 32, 100), "fmnist": ("resnet20", "resnet8", 1, 28, 10)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--methods", nargs="+", default=list(LOSSES))
    ap.add_argument("--out", default=None)
    ap.add_argument("--pair", choices=list(PAIRS), default="cifar")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()
    torch.manual_seed(0)
    t_name, s_name, ch, size, classes = PAIRS[args.pair]
    n, bs = 512, args.batch
    images = torch.randint(0, 256, (n, ch, size, size), dtype=torch.uint8)
    loader = DeviceLoader(images, torch.randint(0, classes, (n,)), mean=[0.5] * ch, std=[0.25] * ch, batch_size=bs,
                          shuffle=True, augment=True, crop_padding=4, flip=True, drop_last=True, seed=0)
    teacher = build_model(t_name, num_classes=classes, in_channels=ch, image_size=size).eval().requires_grad_(False)
    spec = tc.CacheSpec({"format": tc.FORMAT, "teacher": {"name": t_name, "kwargs": {}, "weights": "bench"},
                         "data": {"config": {"name": "random"}, "rows": n}, "augmentation": {"seed": 0},
                         "views": 1, "storage": {"dtype": "fp16", "topk": None}})
    tmp = Path(tempfile.mkdtemp(prefix="adakd-cache-bench-"))
    t0 = time.perf_counter()
    tc.build_views(tmp, spec, teacher, loader, torch.device("cpu"), batch_size=bs, log=lambda m: None)
    build_s = time.perf_counter() - t0
    cache = tc.TeacherCache(tmp, spec)
    cpu = torch.device("cpu")
    results = {"pair": f"{t_name} -> {s_name}", "precision": args.precision, "threads": torch.get_num_threads(), "batch": bs, "build_seconds_512_images": round(build_s, 2),
               "load_before": os.getloadavg(), "methods": {}}
    batches = [b for b in loader]
    for method in args.methods:
        torch.manual_seed(0)
        student = build_model(s_name, num_classes=classes, in_channels=ch, image_size=size)
        parts = build_components(ComponentSpec(losses=LOSSES[method], ce_weight=1.0), student, teacher, device=cpu,
                                 precision=args.precision, num_classes=classes, num_train=n)
        phase = parts.phases[-1]
        opt = build_phase_optimizer(phase, OptimizerConfig(), 0.05, cpu)
        feed = tc.TeacherFeed(cache, cpu, classes)
        times = {"live": [], "cached": []}
        for r in range(args.steps + 1):
            for mode in ("live", "cached"):
                b = batches[(r * 2 + (mode == "cached")) % len(batches)]
                parts.strategy.teacher_cache = feed if mode == "cached" else None
                if mode == "cached":
                    feed.put(b.x, b.index, 0)
                ctx = DistillContext(labels=b.y, indices=b.index, epoch=0, step=r, epochs_total=1, progress=0.0)
                t = time.perf_counter()
                phase.step(b, ctx, opt)
                dt = time.perf_counter() - t
                if r > 0:  # round 0 warms up
                    times[mode].append(dt)
        live, cached = statistics.median(times["live"]), statistics.median(times["cached"])
        results["methods"][method] = {"live_ms": round(live * 1e3, 1), "cached_ms": round(cached * 1e3, 1),
                                      "speedup": round(live / cached, 2), "served_from_cache": feed.served}
        print(f"{method:5s} live {live * 1e3:8.1f} ms  cached {cached * 1e3:8.1f} ms  x{live / cached:.2f}", flush=True)
    results["load_after"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
