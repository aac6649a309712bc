"""An epoch's step outputs, summed on the device, and their sums over the ranks of a torchrun job.

    acc.add(terms, batch_size, step)   per step: no host sync
    reduce_accumulator(acc)            epoch end: sums, steps and samples of the whole job
    acc.means()                        the epoch's record: loss terms per step, train top-1 in % of samples
    accumulator_state(acc)             what a mid-epoch checkpoint keeps (the job's sums)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..runtime.distributed import active, all_gather_object, control_group


@dataclass
class EpochAccumulator:
    """Sums of the step outputs, kept on the device (no host sync per step), and the first step whose loss
    or gradients were NaN/inf (``-1``: none yet; read by :mod:`adakd.engine.nonfinite`)."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    steps: int = 0
    samples: int = 0
    first_bad_step: Tensor | None = None

    def add(self, terms: dict[str, Tensor], batch_size: int, step: int, bad_grad: Tensor | None = None) -> None:
        for key, value in terms.items():
            value = value.detach()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        loss = terms["loss"]
        bad = ~torch.isfinite(loss)
        if bad_grad is not None:
            bad = bad | bad_grad.to(bad.device)
        marker = torch.where(bad, torch.full_like(loss, float(step)), torch.full_like(loss, -1.0))
        if self.first_bad_step is None:
            self.first_bad_step = marker
        else:
            self.first_bad_step = torch.where(self.first_bad_step >= 0, self.first_bad_step, marker)
        self.steps += 1
        self.samples += batch_size

    def bad_step(self) -> int | None:
        if self.first_bad_step is None:
            return None
        step = int(self.first_bad_step.item())
        return step if step >= 0 else None

    def means(self) -> dict[str, float]:
        out = {}
        for key, value in self.sums.items():
            v = value.item()
            out[key] = 100.0 * v / max(self.samples, 1) if key == "correct" else v / max(self.steps, 1)
        if "correct" in out:
            out["train_top1"] = out.pop("correct")
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "steps": self.steps, "samples": self.samples}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.steps, self.samples = state["steps"], state["samples"]


def reduce_accumulator(acc: EpochAccumulator) -> None:
    """In place: sum an accumulator's sums, steps and samples over the ranks (epoch means of the job)."""
    if not active():
        return
    keys = sorted(set().union(*[set(k) for k in all_gather_object(sorted(acc.sums))]))
    device = next(iter(acc.sums.values())).device if acc.sums else torch.device("cpu")
    for key in keys:
        value = acc.sums.get(key)
        value = torch.zeros((), device=device, dtype=torch.float32) if value is None else value.clone()
        if value.device.type == "cpu" and dist.get_backend() == "nccl":
            value = value.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(value)
        acc.sums[key] = value.to(device)
    counts = torch.tensor([acc.steps, acc.samples], dtype=torch.int64)
    dist.all_reduce(counts, group=control_group())
    acc.steps, acc.samples = int(counts[0]), int(counts[1])


def accumulator_state(acc: EpochAccumulator | None) -> dict[str, Any] | None:
    """What a checkpoint stores of an accumulator: the job's sums (rank 0 reloads them, the others restart
    from zero, so the epoch means are right after a resume with any number of processes)."""
    if acc is None:
        return None
    if not active():
        return acc.state_dict()
    total = copy.copy(acc)
    total.sums = dict(acc.sums)
    reduce_accumulator(total)
    return total.state_dict()


def describe_epoch(record: dict[str, Any]) -> str:
    """An epoch record's log line: loss, then train and test top-1 where the record has them."""
    msg = f"loss {record.get('loss', float('nan')):.4f}"
    if "train_top1" in record:
        msg += f" train {record['train_top1']:.2f}%"
    if "test_top1" in record:
        msg += f" test {record['test_top1']:.2f}% (top-5 {record['test_top5']:.2f}%)"
    return msg
