"""GPU readiness without a GPU (issue 29, item 5): one training step of every distiller under every strategy
(every phase: connector pre-training, ABL's search with a meta step, the main phase) runs inside a
:class:`torch.overrides.TorchFunctionMode` that records, for calls made from adakd's own code:

* **host factories**: ``torch.zeros/ones/empty/full/arange/rand*/tensor/eye/linspace/...`` called without
  ``device=``. On a CPU they are harmless; on CUDA the tensor lands on the host and the first op that mixes
  it with the batch crashes (or silently copies it every step);
* **host synchronisations**: ``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``bool(t)`` (a Python
  ``if`` on a tensor), ``int(t)``, ``float(t)``, ``nonzero``, ``torch.equal``, indexing by a boolean mask,
  ``masked_select``, ``unique``. On a CPU they cost nothing; on CUDA each one stalls the host until the
  device has caught up.

A call counts where it is made: the innermost frame outside torch's dispatch glue. Calls made inside
torch itself (an optimizer's step counter, a module's forward) are torch's business and not recorded.
The test fails on any finding not on :data:`ALLOWED` (each entry says where and why it is safe), and on any
entry of ALLOWED that no step uses any more (the list stays short and true). With ``--device cuda`` the
same steps run on the GPU (``scripts/gpu_check.py``), where a stray host factory is a real crash.

Not visible to the mode (so not checked here): ``.to("cpu")`` (on this CPU indistinguishable from the
step's own ``.to(device)``), syncs inside torch's C++ (e.g. ``index_select`` bounds), and the trainer
around the step (engine/trainer.py reads the step's tensors once per logging interval).
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

import adakd
import adakd.losses  # noqa: F401  (registers every distiller)
import adakd.strategies  # noqa: F401  (registers every strategy)
from adakd.config import OptimizerConfig
from adakd.data.loader import DeviceLoader
from adakd.engine.optim import build_optimizer, parameters_of
from adakd.errors import ConfigError
from adakd.losses.base import DistillContext
from adakd.losses.build import build_distiller
from adakd.models import build_model
from adakd.registry import DISTILLERS, STRATEGIES
from adakd.strategies import StrategyContext

SRC = Path(adakd.__file__).resolve().parent
TORCH = Path(torch.__file__).resolve().parent
#: torch's dispatch glue between a caller and the mode (a Python-level torch function or Tensor method).
GLUE = {TORCH / "overrides.py", TORCH / "_tensor.py", TORCH / "functional.py", TORCH / "nn" / "functional.py",
        TORCH / "_jit_internal.py", TORCH / "utils" / "_device.py"}

FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.randn, torch.rand,
             torch.randint, torch.randperm, torch.tensor, torch.as_tensor, torch.eye, torch.linspace,
             torch.logspace, torch.empty_strided, torch.scalar_tensor, torch.tril_indices, torch.triu_indices}
#: Tensor methods (by name) and torch functions that make the host wait for the device.
SYNC_METHODS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero",
                "masked_select", "unique"}
SYNC_FUNCTIONS = {torch.equal, torch.nonzero, torch.masked_select, torch.unique, torch.argwhere}

Finding = tuple[str, str, str]  # (kind "factory" | "sync", the call, where: "path/in/adakd.py:qualname")

#: Each finding the steps may make, with why it is safe or necessary. Keep it short: fix what can be fixed.
ALLOWED: dict[Finding, str] = {
    ("factory", "randperm", "strategies/abl.py:ABLStrategy._val_batch.<locals>.<lambda>"):
        "ABL's validation rows are drawn from a CPU generator seeded by (seed, step), so every device and "
        "rank count draws the same rows; they go to the loader's device right after (a copy, no sync).",
    ("sync", "tolist", "strategies/sakd.py:SAKDStrategy.student_loss"):
        "SAKD: one sync per step, the number of samples routed to each spot; it fixes the shapes of the "
        "per-spot losses (computed on those samples only) and their weights |M_i|/B. The subsets are then "
        "taken with nonzero_static (size known): no further sync.",
    ("sync", "__int__", "losses/crd.py:CRD._check_indices"):
        "CRD checks its dataset indices against num_samples (a clear error instead of a device assert): "
        "every step on the CPU, where it is free; on an accelerator on the first batch only.",
    ("sync", "item", "runtime/distributed.py:all_finite"):
        "train.on_nonfinite: skip (opt-in): whether to step is a host decision, made once per step for "
        "every rank (all-reduced first); without the option no step calls it.",
}


def _site(frame: Any) -> str | None:
    """``path:qualname`` of the first frame outside torch's glue if it lies in ``root``, else None."""
    while frame is not None and Path(frame.f_code.co_filename).resolve() in GLUE:
        frame = frame.f_back
    if frame is None:
        return None
    file = Path(frame.f_code.co_filename).resolve()
    if not file.is_relative_to(Recorder.root):
        return None  # torch's own code (an optimizer, a module), the test, another library
    return f"{file.relative_to(Recorder.root).as_posix()}:{frame.f_code.co_qualname}"


class Recorder(TorchFunctionMode):
    """Records host factories without ``device=`` and host synchronisations called from code under ``root``."""

    root: Path = SRC

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[Finding, int] = defaultdict(int)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = self._classify(func, args, kwargs)
        if what is not None:
            where = _site(sys._getframe(1))
            if where is not None:
                self.found[(what[0], what[1], where)] += 1
        return func(*args, **kwargs)

    @staticmethod
    def _classify(func, args, kwargs) -> tuple[str, str] | None:
        if func in FACTORIES:
            if kwargs.get("device") is not None:
                return None
            if func in (torch.tensor, torch.as_tensor) and args and isinstance(args[0], torch.Tensor):
                return None  # a tensor's copy or view keeps its device
            return ("factory", func.__name__)
        if func in SYNC_FUNCTIONS:
            return ("sync", func.__name__)
        name = getattr(func, "__name__", "")
        owner = getattr(func, "__qualname__", "").split(".")[0]
        if owner in ("TensorBase", "Tensor") and name in SYNC_METHODS:
            return ("sync", name)
        if owner in ("TensorBase", "Tensor") and name == "__getitem__" and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index):
                return ("sync", "boolean mask indexing")
        return None


# ------------------------------------------------------------------------------- the steps under test
SIZE, BATCH, NUM_SAMPLES = 16, 8, 64
WIDTHS = [8, 16, 32]  # equal stage widths for student and teacher: FSP and KD-SVD need them
#: Options for the tiny regime: warm-ups off (their branch is the rest of the run), few CRD negatives,
#: the connector pre-training of FT/AB/FSP on, and main_stage on so that their main phase distils too.
OPTIONS: dict[str, dict] = {"dkd": {"warmup_epochs": 0}, "aekt": {"warmup_epochs": 0},
                            "reviewkd": {"warmup_epochs": 0}, "crd": {"num_negatives": 16},
                            "ft": {"pretrain_epochs": 1}, "ab": {"pretrain_epochs": 1, "main_stage": True},
                            "fsp": {"pretrain_epochs": 1, "main_stage": True}}
#: Strategy options: ABL meta-steps at its first search step (then a plain step: meta_every 4).
STRATEGY_OPTIONS: dict[str, dict] = {"abl": {"warm_start_steps": 0}}
STRATEGY_NAMES = sorted(e.name for e in STRATEGIES.entries())
DISTILLER_NAMES = sorted(e.name for e in DISTILLERS.entries())


@pytest.fixture(scope="module")
def device(test_device) -> torch.device:
    return test_device


def models(device: torch.device):
    torch.manual_seed(0)
    student = build_model("resnet8", num_classes=10, in_channels=1, image_size=SIZE, widths=WIDTHS).to(device)
    teacher = build_model("resnet14", num_classes=10, in_channels=1, image_size=SIZE, widths=WIDTHS).to(device)
    teacher.eval().requires_grad_(False)
    return student, teacher


def val_loader(device: torch.device) -> DeviceLoader:
    g = torch.Generator().manual_seed(5)
    return DeviceLoader(torch.randint(0, 256, (32, 1, SIZE, SIZE), generator=g, dtype=torch.uint8),
                        torch.randint(0, 10, (32,), generator=g), mean=[0.5], std=[0.25], batch_size=BATCH,
                        device=device)


def build_strategy(strategy: str, distiller: str | None, device: torch.device, variant: dict | None = None):
    """``variant``: strategy options over :data:`STRATEGY_OPTIONS`, and ``skip_nonfinite``."""
    variant = dict(variant or {})
    skip_nonfinite = bool(variant.pop("skip_nonfinite", False))
    student, teacher = models(device)
    losses = None if distiller is None else {distiller: OPTIONS.get(distiller, {})}
    d = build_distiller(losses, student, teacher, num_samples=NUM_SAMPLES) if losses else None
    if d is not None:
        d.to(device)
    ctx = StrategyContext(student=student, teacher=teacher, distiller=d, ce_weight=1.0, device=device,
                          precision="fp32", num_classes=10, skip_nonfinite=skip_nonfinite,
                          options={**STRATEGY_OPTIONS.get(strategy, {}), **variant},
                          epochs=1, steps_per_epoch=4, seed=0, val_loader=val_loader(device))
    return STRATEGIES.build(strategy, ctx)


def a_batch(device: torch.device, step: int):
    loader = val_loader(device)
    return loader.batch(torch.arange(step * BATCH, (step + 1) * BATCH, device=device) % loader.num_rows)


def record_steps(strategy, device: torch.device, steps: int = 2) -> dict[Finding, int]:
    """``steps`` steps of every phase of ``strategy`` inside a :class:`Recorder`; its findings."""
    recorder = Recorder()
    for phase in strategy.phases():
        if phase.on_start is not None:
            phase.on_start()
        optimizer = build_optimizer(parameters_of(phase.modules), OptimizerConfig(lr=0.05, momentum=0.9), 0.05)
        phase.model.train()
        for step in range(steps):
            batch = a_batch(device, step)
            ctx = DistillContext(labels=batch.y, indices=batch.index, epoch=0, step=step, epochs_total=1,
                                 progress=step / 4)
            with recorder:
                out = phase.step(batch, ctx, optimizer)
            assert all(torch.isfinite(v).all() for v in out.values()), (phase.name, out)
    return dict(recorder.found)


#: The branches a default step does not take: SAKD routing part of a batch (random coins; a policy that
#: does not start "everywhere"), ABL's other hypergradients, validation loss and student error, and the
#: non-finite guard (train.on_nonfinite: skip).
VARIANTS: list[tuple[str, str, dict]] = [
    ("sakd", "at", {"routing": "random"}), ("sakd", "kd", {"init_everywhere": False, "init_bias": 0.0}),
    ("sakd", "pkt", {"routing": "reverse", "init_everywhere": False, "graft_bn": "batch"}),
    ("abl", "kd", {"hypergradient": "darts"}), ("abl", "kd", {"hypergradient": "first_order"}),
    ("abl", "dkd", {"val_loss": "ce+kd", "student_error": "global"}),
    ("standard", "kd", {"skip_nonfinite": True}), ("abl", "kd", {"skip_nonfinite": True}),
]


def combinations() -> list[tuple[str, str | None, dict]]:
    """Every strategy with no distiller and with each distiller (defaults), then :data:`VARIANTS`."""
    return ([(s, d, {}) for s in STRATEGY_NAMES for d in [None, *DISTILLER_NAMES]]
            + [(s, d, dict(v)) for s, d, v in VARIANTS])


def label(strategy: str, distiller: str | None, variant: dict) -> str:
    return f"{strategy}+{distiller}" + ("" if not variant else "(" + ",".join(f"{k}={v}" for k, v in variant.items())
                                        + ")")


@pytest.fixture(scope="module")
def findings(device) -> tuple[dict[str, dict[Finding, int]], list[str]]:
    """The findings of every combination that builds, by :func:`label`; and the labels of those refused."""
    out: dict[str, dict[Finding, int]] = {}
    refused = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for strategy, distiller, variant in combinations():
            name = label(strategy, distiller, variant)
            try:
                built = build_strategy(strategy, distiller, device, variant)
            except ConfigError:
                refused.append(name)
                continue
            out[name] = record_steps(built, device)
    finally:
        torch.set_num_threads(threads)
    return out, refused


def test_every_strategy_runs_every_distiller_it_accepts(findings):
    ran, refused = findings
    assert STRATEGY_NAMES == ["abl", "sakd", "standard"] and len(DISTILLER_NAMES) == 20
    # refused with one ConfigError at build: ABL without a loss to mix with the student's error, SAKD with a loss
    # that does not decompose into spots (SAKD without a loss distils with its own KD at the logits)
    assert sorted(refused) == ["abl+None", "sakd+fsp", "sakd+kdsvd", "sakd+reviewkd"]
    assert len(ran) == len(combinations()) - len(refused) == 3 * 21 + len(VARIANTS) - 4


def test_no_step_makes_a_host_factory_or_a_host_sync_off_the_allow_list(findings):
    seen: dict[Finding, list[str]] = defaultdict(list)
    for name, found in findings[0].items():
        for f in found:
            seen[f].append(name)
    unexpected = {f: runs for f, runs in seen.items() if f not in ALLOWED}
    assert not unexpected, "\n".join(f"{kind} {call} at {where} (in {len(runs)} runs: {', '.join(runs[:4])})"
                                     for (kind, call, where), runs in sorted(unexpected.items()))
    stale = [f for f in ALLOWED if f not in seen]
    assert not stale, f"allow-list entries no step makes any more (remove them): {stale}"


def test_the_recorder_sees_factories_and_syncs_where_they_are_made(monkeypatch):
    """The mode itself: a step written here (``root`` = this file) with one of each finding."""
    monkeypatch.setattr(Recorder, "root", Path(__file__).resolve().parent)
    x = torch.ones(4)
    recorder = Recorder()
    with recorder:
        torch.zeros(3)  # no device: found
        torch.zeros(3, device=x.device)  # fine
        torch.as_tensor(x)  # a tensor keeps its device: fine
        x.sum().item()
        if x.sum() > 0:  # __bool__
            float(x[x > 0].sum())  # boolean mask indexing, then __float__
        torch.nn.functional.cross_entropy(x.view(1, 4), torch.zeros(1, dtype=torch.long, device=x.device))
        torch.optim.SGD([torch.nn.Parameter(torch.ones(2, device=x.device))], lr=0.1).step()  # torch's own
    here = "test_gpu_readiness.py:test_the_recorder_sees_factories_and_syncs_where_they_are_made"
    assert dict(recorder.found) == {("factory", "zeros", here): 1, ("sync", "item", here): 1,
                                    ("sync", "__bool__", here): 1, ("sync", "boolean mask indexing", here): 1,
                                    ("sync", "__float__", here): 1}


def test_crd_reads_its_normaliser_on_the_host_once_per_run_under_ddp(monkeypatch):
    """CRD's Z is estimated on the job's first batch (all-reduced under torchrun): the host reads ``z < 0``
    for that batch only, and again once after a checkpoint is loaded (the loaded Z may be unset)."""
    import adakd.losses.crd as crd

    monkeypatch.setattr(crd, "world_size", lambda: 2)
    monkeypatch.setattr(crd, "all_reduce_mean", lambda t: t)  # one process stands for the job
    monkeypatch.setattr(crd, "all_gather_rows", lambda t: t)
    student, teacher = models(torch.device("cpu"))
    loss = build_distiller({"crd": {"num_negatives": 16}}, student, teacher, num_samples=NUM_SAMPLES)
    s, t = student.forward_features(a_batch(torch.device("cpu"), 0).x), teacher.forward_features(
        a_batch(torch.device("cpu"), 0).x)

    def bool_reads() -> int:
        recorder = Recorder()
        ctx = DistillContext(labels=torch.zeros(BATCH, dtype=torch.long), indices=torch.arange(BATCH))
        with recorder:
            loss(s, t, ctx)
        return sum(n for (kind, call, where), n in recorder.found.items() if call == "__bool__")

    assert [bool_reads(), bool_reads()] == [2, 0]  # z_s and z_t on the first batch, then never
    assert loss.z_s.item() > 0 and loss.z_t.item() > 0
    loss.load_state_dict(loss.state_dict())
    assert [bool_reads(), bool_reads()] == [2, 0]
