"""Per-step and total cost of ABL against the standard strategy, from interleaved timings (ratios only).

    python studies/abl-depth/abl_step_cost.py --teacher resnet56 --student resnet20 --batch 128 \
        [--loss kd] [--precision fp32|bf16] [--repeats 10] [--threads 1] [--levers] [--profile]

Times one optimisation step of: the standard strategy, ABL's retrain step (gamma fixed) and ABL's search step
(a meta step: exact hypergradient = virtual step + validation forward/backward + real step), each timed between
two standard steps (standard, A, standard, B, ...) so that load fluctuations hit both alike. ``--levers`` adds
the cost options, each as its own row: ``abl_retrain_aux1`` / ``abl_search_aux1`` (the cheapest auxiliary head,
pool + FC: what the heads cost) and ``abl_search_first_order`` (no virtual step). ``--profile`` then prints
where one step's time goes, from the ``abl/...`` profiler scopes of strategies/abl.py (CPU time per step and
share of the step; run it with --threads 1).

Prints the median times, each step's ratio to the standard step (median over the repeats of its time over the
mean of its two neighbouring standard steps; also min/min), and the total time of whole ABL runs relative to a
standard run of the same length, from

    T_abl / T_std = [W * r + (E_s - W) * (s + (k - 1) * r) / k + R * E * r] / E

(E train epochs, E_s search epochs of which W warm start, k = meta_every, r and s the retrain and search steps'
cost in standard steps, R = 1 with the retrain from scratch (the paper's two-stage schedule), 0 with
``retrain: false`` (the search IS the training run, E_s = E); per-epoch evaluation is left out).
Random data of the Fashion-MNIST shape (1x28x28). On a shared or loaded machine only the ratios mean anything.
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

#: (name, E train epochs, E_s search epochs, W warm start epochs, k, R retrain from scratch); the one-stage rows
#: are those of sweep_cost.yaml
SETTINGS = [("paper (search = train schedule, warm 1/4, k 1)", 15, 15, 3.75, 1, 1),
            ("default (search = train schedule, warm 1/4, k 4)", 15, 15, 3.75, 4, 1),
            ("abl row (search 10, warm 3, k 1)", 15, 10, 3, 1, 1),
            ("abl_k4_short (search 5, warm 1, k 4)", 15, 5, 1, 4, 1),
            ("search 3, warm 1, k 4", 15, 3, 1, 4, 1),
            ("retrain false (one stage, warm 3, k 4)", 15, 15, 3, 4, 0),
            ("retrain false (one stage, warm 3, k 8)", 15, 15, 3, 8, 0)]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="resnet56")
    p.add_argument("--student", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--loss", default="kd")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--levers", action="store_true", help="also time the cost options (aux1 heads, first-order)")
    p.add_argument("--profile", action="store_true", help="also print the per-part breakdown of each step")
    return p.parse_args()


def whole_run(r: float, s: float, e: int, e_s: float, w: float, k: int, retrain: int) -> float:
    """T_abl / T_std of the module docstring."""
    return (w * r + (e_s - w) * (s + (k - 1) * r) / k + retrain * e * r) / e


def profile(runs: dict) -> None:
    """CPU time per step in the ``abl/...`` scopes (children included; scopes nest: aux_heads_forward is inside
    forward), against the step's total."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    for name, f in runs.items():
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            with torch.profiler.record_function("step"):
                f(); f()
        events = {e.key: e.cpu_time_total / 2 for e in prof.key_averages()
                  if e.key == "step" or e.key.startswith("abl/")}
        total = events.pop("step", 0.0) or 1.0
        parts = ", ".join(f"{k[4:]} {v / 1000:.0f} ms ({100 * v / total:.0f}%)" for k, v in
                          sorted(events.items(), key=lambda kv: -kv[1]))
        print(f"  {name:24s} {total / 1000:7.0f} ms/step: {parts or '-'}")


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
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
        s._val_batch = lambda step, size: vb
        params = [q for m in s.trainable_modules() for q in m.parameters()]
        return s, torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    b = Batch(x, y, torch.arange(args.batch))
    vb = Batch(x.flip(0), y.flip(0), torch.arange(args.batch))
    ctx = DistillContext(labels=y, indices=b.index, epoch=0, step=0, epochs_total=1, progress=0.0)
    std, o1 = make("standard", {})
    abl, o2 = make("abl", {"warm_start_steps": 0, "meta_every": 1})
    runs = {"standard": lambda: std.train_step(b, ctx, o1), "abl_retrain": lambda: abl.train_step(b, ctx, o2),
            "abl_search": lambda: abl.search_step(b, ctx, o2)}
    if args.levers:
        aux1, o3 = make("abl", {"warm_start_steps": 0, "meta_every": 1, "aux": "aux1"})
        first, o4 = make("abl", {"warm_start_steps": 0, "meta_every": 1, "hypergradient": "first_order"})
        runs["abl_retrain_aux1"] = lambda: aux1.train_step(b, ctx, o3)
        runs["abl_search_aux1"] = lambda: aux1.search_step(b, ctx, o3)
        runs["abl_search_first_order"] = lambda: first.search_step(b, ctx, o4)
    def timed(f) -> float:
        t = time.perf_counter(); f(); return time.perf_counter() - t

    for f in runs.values():
        f(); f()  # warm-up
    # interleaved in pairs: standard, A, standard, B, standard, ... so that every ABL step is compared with the
    # standard steps just before and after it (load fluctuations hit both alike)
    times: dict[str, list[float]] = {k: [] for k in runs}
    pair_ratios: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        before = timed(runs["standard"])
        times["standard"].append(before)
        for k, f in runs.items():
            if k == "standard":
                continue
            t = timed(f)
            after = timed(runs["standard"])
            times[k].append(t)
            times["standard"].append(after)
            pair_ratios[k].append(2 * t / (before + after))
            before = after
    pair_ratios["standard"] = [1.0]
    med = {k: statistics.median(v) for k, v in times.items()}
    # ratio = the median over repeats of (this step / the mean of its two neighbouring standard steps); on a
    # loaded machine also compare min/min (the least-disturbed step of each): if they disagree, the load was uneven
    ratio = {k: statistics.median(v) for k, v in pair_ratios.items()}
    print(f"{args.teacher} -> {args.student}, batch {args.batch}, loss {args.loss}, {args.precision}, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} interleaved repeats")
    for k, v in med.items():
        ratios = sorted(pair_ratios[k])
        print(f"  {k:24s} median {1000 * v:8.1f} ms/step  ratio {ratio[k]:.2f} (per repeat {ratios[0]:.2f}-"
              f"{ratios[-1]:.2f}; min/min {min(times[k]) / min(times['standard']):.2f})")
    heads = {"aux3 (default)": ("abl_retrain", "abl_search")}
    if args.levers:
        heads["aux1"] = ("abl_retrain_aux1", "abl_search_aux1")
    print("total time of an ABL run / a standard run of E epochs (per-epoch evaluation left out):")
    print(f"  {'':48s}       " + "  ".join(f"{h:>14s}" for h in heads))
    for name, e, e_s, w, k, retrain in SETTINGS:
        totals = [whole_run(ratio[r], ratio[s], e, e_s, w, k, retrain) for r, s in heads.values()]
        print(f"  {name:48s} E={e:2d}  " + "  ".join(f"{t:13.2f}x" for t in totals))
    if args.profile:
        print("where a step's time goes (torch.profiler, CPU time per step; scopes nest):")
        profile(runs)


if __name__ == "__main__":
    main()
