"""What the trainer keeps consistent across the ranks of a torchrun job: epoch sums, the resume
position under another world size, evaluation shards, and the run directory as other ranks see it
(the primitives under these are :mod:`adakd.runtime.distributed`)."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..errors import CheckpointError
from ..runtime.distributed import DistInfo, active, all_gather_object, all_reduce_mean_, control_group


def reduce_accumulator(acc: Any) -> None:
    """In place: sum an EpochAccumulator's sums, steps and samples over the ranks (epoch means of the job)."""
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


def accumulator_state(acc: Any) -> dict[str, Any] | None:
    """What a checkpoint stores of an EpochAccumulator: the job's sums (rank 0 reloads them, the others
    restart from zero, so the epoch means are right after a resume with any number of processes)."""
    if acc is None:
        return None
    if not active():
        return acc.state_dict()
    import copy

    total = copy.copy(acc)
    total.sums = dict(acc.sums)
    reduce_accumulator(total)
    return total.state_dict()


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


def elastic_restart() -> int:
    """How many times torchrun's agent has restarted this job's workers (``--max-restarts``; 0 otherwise)."""
    import os

    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def resolve_auto_resume(cfg: Any, allow_changes: tuple[str, ...], log: Any) -> Any:
    """Rank 0: ``cfg`` with ``resume`` decided (True/False) where it is ``"auto"``, or where torchrun restarted
    the workers (``TORCHELASTIC_RESTART_COUNT`` > 0: the agent relaunches them with the same arguments, so a
    restart continues its own run without ``--resume`` added by hand).

    Auto resumes the newest of ``run_dir`` and its numbered siblings (``name-1``, ``name-2``, ...: where a run
    whose directory was taken went) that holds a checkpoint and a ``config.yaml`` equal to ``cfg`` up to the
    keys the strict resume ignores and ``allow_changes``; it starts a new run when there is none."""
    from ..config import load_raw
    from ..errors import AdakdError
    from .checkpoint import previous_path
    from .run_dir import RunDir
    from .trainer import config_changes

    restarted = elastic_restart() > 0
    if cfg.resume is True or (cfg.resume is False and not restarted):
        return cfg
    base = cfg.resolved_run_dir()
    candidates = [base] if cfg.run_dir else [base, *(base.with_name(f"{base.name}-{i}") for i in range(1, 10_000))]
    found = None
    for path in candidates:
        if not path.exists():
            if path != base:
                break
            continue
        rd = RunDir(path)
        if not (rd.last_checkpoint.exists() or previous_path(rd.last_checkpoint).exists()) or not rd.config_path.is_file():
            continue
        try:
            changes = config_changes(load_raw(rd.config_path), cfg.model_dump(mode="json"))
        except AdakdError:
            continue
        if all(k in allow_changes for k in changes):
            found = path
    why = f"torchrun restart {elastic_restart()}" if restarted else "resume: auto"
    if found is None:
        log(f"{why}: no checkpoint of this config under {base}; starting a new run")
        return cfg.model_copy(update={"resume": False})
    log(f"{why}: continuing {found} from its last checkpoint")
    return cfg.model_copy(update={"resume": True, "run_dir": str(found)})

