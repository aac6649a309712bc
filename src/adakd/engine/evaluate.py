"""Top-1 / top-5 accuracy and mean cross-entropy on a loader, accumulated on the device (one sync at the end).

With ``dist`` (a multi-process job) each rank evaluates its strided shard of the loader and the counts
are summed over the ranks, so every rank returns the numbers of the whole split."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.device import autocast

if TYPE_CHECKING:
    from ..runtime.distributed import DistInfo


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, precision: str = "fp32",
             dist: "DistInfo | None" = None) -> dict[str, float]:
    from ..runtime.distributed import all_reduce_sums
    from .ranks import shard_loader

    sharded = dist is not None and dist.active and shard_loader(loader, dist) is not loader
    if sharded:
        loader = shard_loader(loader, dist)
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
    if sharded:
        correct1, correct5, loss_sum, total = all_reduce_sums(
            [correct1, correct5, loss_sum, torch.tensor(count, device=device)])
        count = int(total.item())
    if count == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "count": 0}
    return {
        "top1": 100.0 * correct1.item() / count,
        "top5": 100.0 * correct5.item() / count,
        "loss": loss_sum.item() / count,
        "count": count,
    }
