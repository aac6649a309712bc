"""What the trainer keeps consistent across the ranks of a torchrun job: BatchNorm statistics, the resume
position under another world size, evaluation shards, and the run directory as other ranks see it
(the primitives under these are :mod:`adakd.runtime.distributed`; the epoch sums over the ranks are
:mod:`adakd.engine.accumulator`'s)."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import CheckpointError
from ..runtime.distributed import DistInfo, active, all_reduce_mean_


def agree_batchnorm_statistics(modules: list[Any]) -> int:
    """In place: every BatchNorm running mean and variance of ``modules`` <- its mean over the ranks.

    Without ``train.sync_batchnorm`` each rank normalises over its own shard, so its running statistics
    follow its shard and the ranks hold W different models for evaluation. The trainer calls this before
    every evaluation and checkpoint: the evaluated model (each rank a shard of the test split) is then one
    model, the one written to ``last.pt`` / ``best.pt`` / ``student.pt``. The mean is the running mean of
    the global batch exactly (equal shards); the variance is the mean of the shards' variances (it misses
    the spread of the shard means, as any per-rank BatchNorm does). ``num_batches_tracked`` is the same on
    every rank. Returns the number of tensors averaged (0 in 1 process)."""
    if not active():
        return 0
    import torch.nn as nn

    seen: dict[int, torch.Tensor] = {}
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                for t in (m.running_mean, m.running_var):
                    if t is not None and t.is_floating_point():
                        seen.setdefault(id(t), t)
    tensors = list(seen.values())
    with torch.no_grad():
        all_reduce_mean_(tensors)
    return len(tensors)


def resume_position(state: dict[str, Any], loader: Any, steps_per_epoch: int) -> tuple[dict[str, Any], int, int]:
    """A checkpoint's (loader state, step, position) for this job, whose world size or per-rank batch may
    differ from the one that wrote it.

    An epoch-end checkpoint (position 0) always fits. Inside an epoch the ranks had consumed the first
    ``position * batch * W`` samples of the epoch's permutation; this job continues there if that is a
    whole number of its global batches, else a :class:`CheckpointError` says how to resume.
    """
    saved = dict(state["loader"])
    old_w, old_b = int(saved.get("world_size", 1)), int(saved.get("batch_size", loader.batch_size))
    new_w, new_b = loader.world_size, loader.batch_size
    step, position = int(state["step"]), int(state["position"])
    if (old_w, old_b) == (new_w, new_b):
        return saved, step, position
    consumed = int(saved["position"]) * old_b * old_w
    if consumed % (new_b * new_w):
        raise CheckpointError(
            f"the checkpoint was written inside an epoch by {old_w} process(es) x batch {old_b} after "
            f"{consumed} samples, not a whole number of this job's global batches ({new_w} x {new_b}). Resume "
            "with the old number of processes and batch size, or from an epoch-end checkpoint.")
    new_position = consumed // (new_b * new_w)
    saved.update(world_size=new_w, batch_size=new_b, position=new_position)
    return saved, int(state["epoch"]) * steps_per_epoch + new_position, new_position


def shard_loader(loader: Any, info: DistInfo) -> Any:
    """This rank's strided shard of an evaluation DeviceLoader (the tensors are shared, not copied)."""
    if not info.active or getattr(loader, "world_size", None) != 1 or getattr(loader, "shuffle", True):
        return loader
    import copy

    shard = copy.copy(loader)
    shard.rank, shard.world_size = info.rank, info.world_size
    shard._plan_cache = None
    return shard


def follower_run_dir(path: Any) -> Any:
    """The run directory as seen by a rank other than 0: same paths, every write a no-op."""
    import logging

    from .run_dir import RunDir

    class FollowerRunDir(RunDir):
        def create(self) -> None: ...

        def write_config(self, text: str) -> None: ...

        def append_metrics(self, record: dict[str, Any]) -> None: ...

        def truncate_metrics(self, keep: int) -> None: ...

        def write_summary(self, summary: dict[str, Any]) -> None: ...

        def logger(self, name: str = "adakd") -> logging.Logger:
            logger = logging.getLogger(f"{name}.follower")
            logger.propagate = False
            if not logger.handlers:
                logger.addHandler(logging.NullHandler())
            return logger

    return FollowerRunDir(path)
