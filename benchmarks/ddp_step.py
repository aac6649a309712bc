"""Step time per rank of the standard strategy (KD), old optimiser-hook averaging vs DistributedDataParallel.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/ddp_step.py [--windows 12] [--steps 10]

Both paths train the same student in one process group, interleaved window by window (hook, ddp, hook,
...), so machine load (shared CPUs) hits both alike. "hook": the pre-issue-17 path, re-implemented here
as it was: forward, backward, then an optimiser pre-step hook that all-reduces a has-gradient mask (read
back with .tolist()) and flattens/copies ~25 MB buckets one blocking all-reduce at a time, plus a gloo
all-reduce of the stop flag every step. "ddp": the new path (DDP over the step module, stop flag every 16
steps). Prints the median seconds per step over the windows, per rank and mode.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from adakd.losses.build import build_distiller
from adakd.models import build_model
from adakd.strategies.parallel import LossForward
from adakd.runtime import distributed as ddp
import torch.nn.functional as F


def old_all_reduce_grads(params):
    params = [p for p in params if p.requires_grad]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    present = []
    for p, any_rank in zip(params, has.tolist()):
        if any_rank:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            present.append(p.grad)
    w = dist.get_world_size()
    for bucket in ddp._buckets(present):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat.div_(w)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=12)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--student", default="resnet20")
    ap.add_argument("--teacher", default="resnet32")
    args = ap.parse_args()
    ddp.init_distributed(torch.device("cpu"))
    rank = dist.get_rank()
    torch.manual_seed(0)
    student = build_model(args.student, num_classes=10, in_channels=1, image_size=28)
    teacher = build_model(args.teacher, num_classes=10, in_channels=1, image_size=28).eval()
    distiller = build_distiller({"kd": {"weight": 0.9}}, student, teacher)
    ddp.broadcast_module(student)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))

    def compute(batch, _ctx):
        xb, yb = batch
        with torch.no_grad():
            t = teacher.forward_features(xb)
        s = student.forward_features(xb)
        loss = 0.1 * F.cross_entropy(s.logits, yb) + sum(distiller(s, t, None).values())
        return loss

    plain = LossForward(compute, [student, distiller])
    wrapped = ddp.wrap_ddp(plain, torch.device("cpu"))
    opt_hook = torch.optim.SGD(student.parameters(), lr=0.0, momentum=0.9)  # lr 0: the same work, no drift
    opt_hook.register_step_pre_hook(lambda o, a, k: old_all_reduce_grads(p for g in o.param_groups for p in g["params"]))
    opt_ddp = torch.optim.SGD(student.parameters(), lr=0.0, momentum=0.9)
    flag = False

    def step(mode: str, i: int) -> None:
        if mode == "hook":
            opt_hook.zero_grad(set_to_none=True)
            plain((x, y), None).backward()
            opt_hook.step()
            ddp.agree_any(flag)
        else:
            opt_ddp.zero_grad(set_to_none=True)
            wrapped((x, y), None).backward()
            opt_ddp.step()
            if i % 16 == 0:
                ddp.agree_any(flag)

    times: dict[str, list[float]] = {"hook": [], "ddp": []}
    for mode in ("hook", "ddp"):  # warm-up
        for i in range(3):
            step(mode, i)
    for w in range(args.windows):
        for mode in (("hook", "ddp") if w % 2 == 0 else ("ddp", "hook")):
            dist.barrier()
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(mode, i)
            times[mode].append((time.perf_counter() - t0) / args.steps)
    for r in range(dist.get_world_size()):
        if r == rank:
            med = {m: statistics.median(v) for m, v in times.items()}
            print(f"rank {rank}: median s/step over {args.windows} windows x {args.steps} steps "
                  f"(batch {args.batch}/rank, {args.student}<-{args.teacher} KD): hook {med['hook']*1e3:.1f} ms, "
                  f"ddp {med['ddp']*1e3:.1f} ms, ddp/hook {med['ddp']/med['hook']:.3f}", flush=True)
        dist.barrier()
    ddp.shutdown_distributed()


if __name__ == "__main__":
    main()
