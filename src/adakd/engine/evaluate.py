"""Top-1 / top-5 accuracy and mean cross-entropy on a loader, accumulated on the device (one sync at the end)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .device import autocast


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, precision: str = "fp32") -> dict[str, float]:
    was_training = model.training
    model.eval()
    correct1 = torch.zeros((), device=device, dtype=torch.long)
    correct5 = torch.zeros((), device=device, dtype=torch.long)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = 0
    try:
        for batch in loader:
            with autocast(device, precision):
                logits = model(batch.x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, batch.y, reduction="sum").double()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hits = top == batch.y[:, None]
            correct1 += hits[:, 0].sum()
            correct5 += hits.any(dim=1).sum()
            count += batch.y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "count": 0}
    return {
        "top1": 100.0 * correct1.item() / count,
        "top5": 100.0 * correct5.item() / count,
        "loss": loss_sum.item() / count,
        "count": count,
    }
