"""Per-step and total cost of ABL against the standard strategy, on one CPU or GPU, from interleaved timings.

    python studies/abl-depth/abl_step_cost.py [--teacher resnet56 --student resnet20] [--batch 128] [--loss kd]
                                        [--precision fp32|bf16] [--repeats 10]

Times one optimisation step of: the standard strategy, ABL's retrain step (gamma fixed) and ABL's search step
(exact hypergradient: virtual step + validation forward/backward + real step), interleaved so that load
fluctuations hit all three alike. Prints the medians, their ratios to the standard step, and the total time of
whole ABL runs relative to a standard run of the same length, from

    T_abl / T_std = [W * r + (E_s - W) * (s + (k - 1) * r) / k + E] / E

(E train epochs, E_s search epochs of which W warm start, k = meta_every, r and s the retrain and search steps'
cost in standard steps; per-epoch evaluation is left out). Random data of the Fashion-MNIST shape (1x28x28).
"""
import argparse
import statistics
import time

import torch

import adakd.strategies  # noqa: F401  (registers the strategies)
from adakd.data import Batch
from adakd.losses.base import DistillContext
from adakd.losses.build import build_distiller
from adakd.models import build_model
from adakd.registry import STRATEGIES
from adakd.strategies import StrategyContext

#: (name, E train epochs, E_s search epochs, W warm start epochs, k): the settings of studies/abl-depth
SETTINGS = [("paper (search = train schedule, warm 1/4, k 1)", 15, 15, 3.75, 1),
            ("abl row (search 10, warm 3, k 1)", 15, 10, 3, 1),
            ("abl_k4_short (search 5, warm 1, k 4)", 15, 5, 1, 4),
            ("search 5, warm 1, k 1", 15, 5, 1, 1),
            ("search 10, warm 3, k 4", 15, 10, 3, 4)]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--loss", default="kd")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=10)
    return p.parse_args()


def main() -> None:
    args = parse()
    torch.manual_seed(0)
    teacher = build_model(args.teacher, num_classes=10, in_channels=1, image_size=28).eval()

    def make(name: str, options: dict):
        torch.manual_seed(0)
        student = build_model(args.student, num_classes=10, in_channels=1, image_size=28)
        d = build_distiller({args.loss: {}}, student, teacher, num_samples=1000)
        ctx = StrategyContext(student=student, teacher=teacher, distiller=d, ce_weight=0.1,
                              device=torch.device("cpu"), precision=args.precision, num_classes=10, options=options,
                              epochs=1, steps_per_epoch=10, seed=0, val_loader=object())
        s = STRATEGIES.build(name, ctx)
        params = [q for m in s.trainable_modules() for q in m.parameters()]
        return s, torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    b = Batch(x, y, torch.arange(args.batch))
    vb = Batch(x.flip(0), y.flip(0), torch.arange(args.batch))
    ctx = DistillContext(labels=y, indices=b.index, epoch=0, step=0, epochs_total=1, progress=0.0)
    std, o1 = make("standard", {})
    abl, o2 = make("abl", {"warm_start_steps": 0})
    abl._val_batch = lambda step, size: vb
    runs = {"standard": lambda: std.train_step(b, ctx, o1), "abl_retrain": lambda: abl.train_step(b, ctx, o2),
            "abl_search": lambda: abl.search_step(b, ctx, o2)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for f in runs.values():
        f(); f()  # warm-up
    for _ in range(args.repeats):
        for k, f in runs.items():  # interleaved: load fluctuations hit all three alike
            t = time.perf_counter(); f(); times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.teacher} -> {args.student}, batch {args.batch}, loss {args.loss}, {args.precision}, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} interleaved repeats")
    for k, v in med.items():
        print(f"  {k:12s} {1000 * v:8.1f} ms/step  ratio {v / med['standard']:.2f}")
    r, s = med["abl_retrain"] / med["standard"], med["abl_search"] / med["standard"]
    print("total time of an ABL run / a standard run of E epochs (per-epoch evaluation left out):")
    for name, e, e_s, w, k in SETTINGS:
        total = (w * r + (e_s - w) * (s + (k - 1) * r) / k + e * r) / e
        print(f"  {name:48s} E={e:2d}  {total:.2f}x")


if __name__ == "__main__":
    main()
