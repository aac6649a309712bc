"""Per-step cost of ABL vs standard KD on the Fashion-MNIST pair (ResNet-20 -> ResNet-8, 28x28), CPU fp32.

    python experiments/abl_step_cost.py [BATCH=64] [LOSS=kd] [REPEATS=10]

Times one optimisation step of: the standard strategy, ABL's retrain step (gamma fixed) and ABL's
search step (exact hypergradient: virtual step + validation forward/backward + real step), interleaved
so that load fluctuations hit all three alike; prints medians and ratios to the standard step."""
import statistics, sys, time
import torch
from adakd.data import Batch
from adakd.losses.base import DistillContext
from adakd.losses.build import build_distiller
from adakd.models import build_model
from adakd.registry import STRATEGIES
from adakd.strategies import StrategyContext
import adakd.strategies  # registers

torch.manual_seed(0)
B = int(sys.argv[1]) if len(sys.argv) > 1 else 64
loss = sys.argv[2] if len(sys.argv) > 2 else "kd"
teacher = build_model("resnet20", num_classes=10, in_channels=1, image_size=28).eval()
def make(name, options):
    torch.manual_seed(0)
    student = build_model("resnet8", num_classes=10, in_channels=1, image_size=28)
    d = build_distiller({loss: {}}, student, teacher, num_samples=1000)
    ctx = StrategyContext(student=student, teacher=teacher, distiller=d, ce_weight=0.1, device=torch.device("cpu"),
                          precision="fp32", num_classes=10, options=options, epochs=1, steps_per_epoch=10, seed=0,
                          val_loader=object())
    s = STRATEGIES.build(name, ctx)
    opt = torch.optim.SGD([q for m in s.trainable_modules() for q in m.parameters()], lr=0.01, momentum=0.9, nesterov=True)
    return s, opt
g = torch.Generator().manual_seed(0)
x = torch.randn(B, 1, 28, 28, generator=g); y = torch.randint(0, 10, (B,), generator=g)
b = Batch(x, y, torch.arange(B)); vb = Batch(x.flip(0), y.flip(0), torch.arange(B))
ctx = DistillContext(labels=y, indices=b.index, epoch=0, step=0, epochs_total=1, progress=0.0)
std, o1 = make("standard", {})
abl, o2 = make("abl", {"warm_start_steps": 0})
abl._val_batch = lambda step, size: vb
runs = {"standard": lambda: std.train_step(b, ctx, o1), "abl_retrain": lambda: abl.train_step(b, ctx, o2),
        "abl_search": lambda: abl.search_step(b, ctx, o2)}
times = {k: [] for k in runs}
for k, f in runs.items():
    f(); f()
for _ in range(int(sys.argv[3]) if len(sys.argv) > 3 else 10):
    for k, f in runs.items():  # interleaved: load fluctuations hit all three alike
        t = time.perf_counter(); f(); times[k].append(time.perf_counter() - t)
med = {k: statistics.median(v) for k, v in times.items()}
print(f"batch {B}, loss {loss}, torch threads {torch.get_num_threads()}")
for k, v in med.items():
    print(f"{k:12s} {1000 * v:8.1f} ms/step  ratio {v / med['standard']:.2f}")
