"""Every distiller learns: a short real Fashion-MNIST training (tiny teacher and student, CPU) in which
the distillation loss goes down and nothing becomes NaN.

The teacher (ResNet-14, widths 8/16/32) is trained once per test session and shared. Each distiller
then trains a fresh ResNet-8 (same widths: FSP and KD-SVD need equal stage widths) for STEPS steps of
batch 32 through the real strategy step (``StandardStrategy`` phases: connector pre-training first for
FT/AB/FSP); the mean distillation loss of the last WINDOW steps must be below that of the first WINDOW.
Warm-ups are switched off so that the loss scale does not change during the run.

Every distiller runs three times, in fp32, under bf16 autocast and under fp16 autocast with its loss scaler
(torch.amp.GradScaler: the steps it skips for an overflow are not the distiller's), named explicitly (not
through ``precision: auto``), so the suite exercises every numerics on any CPU, with or without AMX. The
fp16 runs (CPU fp16 autocast is slow: minutes for all of them) are CI's second stage (``-m extended``).
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from adakd.config import OptimizerConfig
from adakd.data import DataConfig, build_data
from adakd.engine.evaluate import evaluate
from adakd.engine.optim import build_optimizer, parameters_of
from adakd.losses.base import DistillContext
from adakd.losses.build import build_distiller
from adakd.models import build_model
from adakd.registry import DISTILLERS, STRATEGIES
from adakd.runtime.device import new_grad_scaler
from adakd.strategies import StrategyContext

WIDTHS = [8, 16, 32]
BATCH = 32
TEACHER_STEPS = 300
STEPS = 100
PRETRAIN_STEPS = 30
WINDOW = 20
DEVICE = torch.device(os.environ.get("ADAKD_TEST_DEVICE", "cpu"))  # pytest --device
NOT_TERMS = {"ce", "loss", "correct", "pretrain"}

#: Options per distiller for this tiny regime (reference weights; warm-ups off; fewer CRD negatives).
OPTIONS: dict[str, dict] = {
    "dkd": {"warmup_epochs": 0},
    "aekt": {"warmup_epochs": 0},
    "reviewkd": {"warmup_epochs": 0},
    "crd": {"num_negatives": 512},
    "vid": {},
    "ft": {"pretrain_epochs": 1},
    "ab": {"pretrain_epochs": 1, "main_stage": True},  # main_stage: the main phase distils too (default: CE only)
    "fsp": {"pretrain_epochs": 1, "main_stage": True},  # at its default weight (5: see losses/fsp.py on stability)
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(fmnist_root):
    cfg = DataConfig(name="fashion_mnist", root=str(fmnist_root), batch_size=BATCH, eval_batch_size=500,
                     train_subset=4096, test_subset=1000, seed=0)
    return build_data(cfg, DEVICE, seed=0)


def strategy_for(student, teacher, distiller, data, precision="fp32"):
    return STRATEGIES.build("standard", StrategyContext(
        student=student, teacher=teacher, distiller=distiller, ce_weight=1.0, device=DEVICE, precision=precision,
        num_classes=10, epochs=1, steps_per_epoch=len(data.train), grad_scaler=new_grad_scaler(DEVICE, precision)))


def batches(loader, steps: int):
    """``steps`` batches, cycling epochs of the loader."""
    epoch, n = 0, 0
    while True:
        loader.set_epoch(epoch)
        for batch in loader:
            if n == steps:
                return
            yield batch
            n += 1
        epoch += 1


def run_phase(phase, data, steps: int, epoch_len: int, decay: bool = False) -> list[dict[str, float]]:
    """``steps`` steps of ``phase`` at lr 0.05 (linearly decayed to 0 with ``decay``); the step records."""
    optimizer = build_optimizer(parameters_of(phase.modules), OptimizerConfig(lr=0.05, nesterov=True), 0.05)
    phase.model.train()
    records = []
    for i, batch in enumerate(batches(data.train, steps)):
        if decay:
            for group in optimizer.param_groups:
                group["lr"] = 0.05 * (1 - i / steps)
        ctx = DistillContext(labels=batch.y, indices=batch.index, epoch=i // epoch_len, step=i,
                             epochs_total=max(steps // epoch_len, 1), progress=i / epoch_len)
        out = phase.step(batch, ctx, optimizer)
        records.append({k: float(v) for k, v in out.items() if k != "correct"})
    return records


@pytest.fixture(scope="module")
def teacher(data):
    """A ResNet-14 trained for TEACHER_STEPS steps, frozen; shared by every distiller."""
    torch.manual_seed(0)
    model = build_model("resnet14", num_classes=10, in_channels=1, image_size=28, widths=WIDTHS)
    phase = strategy_for(model, None, None, data).phases()[-1]
    run_phase(phase, data, TEACHER_STEPS, len(data.train), decay=True)
    model.eval().requires_grad_(False)
    top1 = evaluate(model, data.test, DEVICE, "fp32")["top1"]
    assert top1 > 70.0, f"the tiny teacher did not learn ({top1:.1f}%)"
    return model


def distill_terms(record: dict[str, float]) -> float:
    return sum(v for k, v in record.items() if k not in NOT_TERMS)


CASES = [pytest.param(n, {}, id=n, )
         for n in sorted(e.name for e in DISTILLERS.entries())]
CASES.append(pytest.param("aekt", {"serialize": False}, id="aekt-noserialize"))


@pytest.mark.parametrize("precision", ["fp32", "bf16", pytest.param("fp16", marks=pytest.mark.extended)])
@pytest.mark.parametrize("name,extra", CASES)
def test_distiller_learns_on_fashion_mnist(name, extra, precision, data, teacher):
    torch.manual_seed(1)
    student = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, widths=WIDTHS)
    options = {**OPTIONS.get(name, {}), **extra}
    distiller = build_distiller({name: options}, student, teacher, num_samples=data.num_train)
    phases = strategy_for(student, teacher, distiller, data, precision).phases()
    epoch_len = len(data.train)
    if len(phases) == 2:  # connector pre-training (FT, AB, FSP): its own loss goes down too
        pre = run_phase(phases[0], data, PRETRAIN_STEPS, epoch_len)
        values = [r["pretrain"] for r in pre]
        assert all(math.isfinite(v) for v in values), f"{name} ({precision}) pre-training: non-finite {values}"
        assert sum(values[-5:]) < sum(values[:5]), f"{name} pre-training loss did not decrease: {values}"
    records = run_phase(phases[-1], data, STEPS, epoch_len)
    for r in records:
        assert all(math.isfinite(v) for v in r.values()), f"{name} ({precision}): non-finite {r}"
    losses = [distill_terms(r) for r in records]
    first, last = sum(losses[:WINDOW]) / WINDOW, sum(losses[-WINDOW:]) / WINDOW
    assert last < first, f"{name} ({precision}): distillation loss did not decrease ({first:.4g} -> {last:.4g})"
    assert all(torch.isfinite(p).all() for p in student.parameters())
