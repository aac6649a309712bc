"""Data-parallel training over ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

    torchrun --nproc_per_node N -m adakd train CONFIG          # one node
    torchrun --nnodes 2 --node_rank R --master_addr HOST --master_port P --nproc_per_node N -m adakd train CONFIG

How a run is parallelised (DistributedDataParallel semantics):
  * every rank holds the same student (rank 0's weights are broadcast at start); the frozen teacher is a
    plain local copy on every rank (no gradients, never wrapped);
  * the training loader of rank r yields the strided shard ``perm[r::W]`` of the epoch's permutation, so
    one step of W ranks with ``data.batch_size = b`` sees the global batch ``B = W * b`` of a 1-process run
    with ``batch_size = B``;
  * the gradients are averaged over the ranks (``g <- (1 / W) * sum_r g_r``) in one of two ways:
      - phases whose forward passes are one module call (the standard strategy, connector pre-training:
        ``strategies.base.DataParallelForward``) train through torch's ``DistributedDataParallel``
        (:func:`wrap_ddp`): bucketed all-reduces launched during the backward, overlapped with it;
      - strategies whose steps call ``torch.autograd.grad`` / ``backward(inputs=...)`` or take several
        optimiser steps per batch (SAKD, ABL) average explicitly before each step (:func:`sync_gradients`,
        :func:`all_reduce_grads`; see the reason there);
  * BatchNorm normalises over each rank's shard unless ``train.sync_batchnorm`` (then over the global
    batch: ``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` where torch has none, e.g. CPU);
    without it the engine averages the running statistics over the ranks before every evaluation and
    checkpoint (``engine.ranks.agree_batchnorm_statistics``);
  * test accuracy: each rank evaluates its shard of the test split, the counts are summed;
  * only rank 0 writes (run directory, checkpoints, metrics, logs) and trains a teacher recipe; the
    others wait for it.

For strategies with state of their own (SAKD's policy, ABL's meta variables), in this module:
  * ``sync_gradients(extra_optimizer)`` once after building an extra optimiser (its steps then average
    the gradients like the main one), or ``all_reduce_grads(params)`` right before a manual update;
  * ``all_reduce_mean(tensor)`` for statistics that must agree (e.g. a routing rate used for decisions);
  * ``all_finite(loss)`` for a skip decision that every rank must take the same way;
  * ``is_main()`` to guard files the strategy writes itself, ``world_size()``/``rank()``;
  * ``all_gather_rows(tensor)`` to concatenate per-rank rows (rank order; sizes may differ), as CRD does
    for its memory bank. Every rank must reach every collective: call a synchronising loss on each rank
    (possibly with an empty subset), never on some ranks only.
All helpers are no-ops in a 1-process run.
"""
from __future__ import annotations

import contextlib
import gc
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import AdakdError, ConfigError

T = TypeVar("T")

#: Gradient buckets of about this many bytes per all-reduce (DDP's default bucket size).
BUCKET_BYTES = 25 * 2**20

_state: dict[str, Any] = {"initialized_here": False, "local_only": 0, "control": None}


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


SINGLE = DistInfo()


# ----------------------------------------------------------------------------------------- setup
def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with torchrun.") from None


def launched_by_torchrun() -> bool:
    """True in a worker of a multi-process torchrun job (WORLD_SIZE > 1); never raises (a bad WORLD_SIZE,
    which ``init_distributed`` reports, counts as not launched)."""
    try:
        return _env_world_size() > 1
    except ConfigError:
        return False


def init_distributed(device: torch.device) -> DistInfo:
    """Join the job described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Without those variables (or with WORLD_SIZE=1) this is a 1-process run. An existing default
    process group is reused. Backend: NCCL for CUDA devices, gloo otherwise; timeout
    ``$ADAKD_DIST_TIMEOUT_MIN`` minutes (default 120: rank 0 may be training a teacher meanwhile).
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if _env_world_size() <= 1:
        return SINGLE
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed.")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set: launch with torchrun "
                          "(torchrun --nproc_per_node N -m adakd train CONFIG).")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    minutes = float(os.environ.get("ADAKD_DIST_TIMEOUT_MIN", "120"))
    timeout = datetime.timedelta(minutes=minutes)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart not in ("", "0"):
        # a torchrun restart: the agent's store outlives the killed workers, and with it their gloo/NCCL
        # addresses under the default group's keys (a relaunched rank 0 once dialled the dead rank 1:
        # "connectFullMesh failed ... Connection refused"). This attempt's keys get their own prefix.
        from torch.distributed.rendezvous import rendezvous

        store, rank_, size = next(rendezvous("env://", timeout=timeout))
        dist.init_process_group(backend, store=dist.PrefixStore(f"adakd/attempt_{restart}", store), rank=rank_,
                                world_size=size, timeout=timeout)
    else:
        dist.init_process_group(backend, timeout=timeout)
    _state["initialized_here"] = True
    return current()


def shutdown_distributed(clean: bool = True) -> None:
    """Destroy the process group if :func:`init_distributed` created it (after a barrier when ``clean``;
    after an error the peers may be gone, so no barrier)."""
    destroyed = _state["initialized_here"] and dist.is_initialized()
    if destroyed:
        if clean:
            dist.barrier()
        dist.destroy_process_group()
    _state.update(initialized_here=False, control=None)
    if destroyed:  # a one-process run has no groups: skip the full collection (0.1-0.4 s with torch loaded)
        gc.collect()  # free the groups' C++ state now, not during interpreter shutdown


def _active() -> bool:
    return (not _state["local_only"]) and dist.is_available() and dist.is_initialized() \
        and dist.get_world_size() > 1


def current() -> DistInfo:
    """The job as seen now (1 process inside :func:`local_only`)."""
    if not _active():
        return SINGLE
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    return current().is_main


def rank() -> int:
    return current().rank


def world_size() -> int:
    return current().world_size


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Within the block every helper behaves as in a 1-process run (rank 0 training a teacher recipe)."""
    _state["local_only"] += 1
    try:
        yield
    finally:
        _state["local_only"] -= 1


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """``cuda`` -> ``cuda:LOCAL_RANK`` in a multi-process job; other devices unchanged."""
    if info.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", info.local_rank)
    return device


def _control_group() -> Any:
    """A gloo group for small host-side agreements (flags, objects), whatever the main backend."""
    if _state["control"] is None:
        _state["control"] = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return _state["control"]


# ------------------------------------------------------------------------------- agreement
def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control_group())
    return box[0]


def run_on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only (the others wait) and return its result on every rank.

    A user error (:class:`AdakdError`) on rank 0 is raised on every rank with the same message.
    """
    if not _active():
        return fn()
    payload: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            payload = ("ok", fn())
        except BaseException as exc:
            kind = type(exc) if isinstance(exc, AdakdError) else RuntimeError
            box: list[Any] = [("error", (kind, str(exc) if kind is not RuntimeError else "rank 0 failed: " + repr(exc)))]
            dist.broadcast_object_list(box, src=0, group=_control_group())
            raise
    payload = broadcast_object(payload)
    if payload[0] == "error":
        kind, message = payload[1]
        raise kind(message)
    return payload[1]


def agree_any(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. a SIGTERM seen by one of them)."""
    if not _active():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group())
    return bool(t.item())


def agree_min(value: int | None) -> int | None:
    """The smallest ``value`` over the ranks (None = no value), e.g. the first step with a NaN loss."""
    if not _active():
        return value
    t = torch.tensor([2**62 if value is None else int(value)], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_control_group())
    out = int(t.item())
    return None if out == 2**62 else out


def all_finite(loss: Tensor) -> bool:
    """Whether ``loss`` is finite on every rank (one decision for all: a skipped step stays in step)."""
    ok = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
    if _active():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """In place: ``tensor <- (1 / W) * sum_r tensor_r``; returns it."""
    if _active():
        dist.all_reduce(tensor)
        tensor.div_(dist.get_world_size())
    return tensor


def all_gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 in rank order; row counts may differ."""
    if not _active():
        return tensor
    w = dist.get_world_size()
    n = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.int64)
    counts = [torch.zeros_like(n) for _ in range(w)]
    dist.all_gather(counts, n)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    padded = tensor
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, pad])
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (identical start): torch's coalesced broadcast, the one
    DDP's constructor uses (buckets of ~250 MB, not one collective per tensor)."""
    if not _active():
        return
    tensors = [t.detach() for t in (*module.parameters(), *module.buffers())]
    if tensors:
        with torch.no_grad():
            dist._broadcast_coalesced(dist.group.WORLD, tensors, 250 * 2**20, 0)


# --------------------------------------------------------------------------------- gradients
def _buckets(tensors: list[Tensor]) -> Iterator[list[Tensor]]:
    bucket: list[Tensor] = []
    size = 0
    for t in tensors:
        if bucket and (size + t.numel() * t.element_size() > BUCKET_BYTES or t.dtype != bucket[0].dtype
                       or t.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel() * t.element_size()
    if bucket:
        yield bucket


def all_reduce_grads(params: Iterable[nn.Parameter]) -> None:
    """Average ``p.grad`` over the ranks: g <- (1 / W) * sum_r g_r (bucketed all-reduce).

    A parameter whose gradient is None on some ranks and set on others gets zeros there first (it took
    no part in those ranks' losses); one that has no gradient anywhere keeps None, so the optimiser
    skips it as a 1-process run would. Every rank must call this with the same parameters in order.
    Whether a gradient exists is host-side knowledge (``p.grad is None``): the ranks agree on it through a
    small all-reduce on the gloo control group, with no device-to-host copy (no stream sync on CUDA).
    """
    if not _active():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)  # host memory
    dist.all_reduce(has, op=dist.ReduceOp.MAX, group=_control_group())
    present = []
    for p, any_rank in zip(params, has.tolist()):
        if any_rank:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            present.append(p.grad)
    all_reduce_mean_(present)


def all_reduce_mean_(tensors: list[Tensor]) -> None:
    """In place: every tensor <- (1 / W) * sum_r tensor_r.

    torch's flatten/unflatten helpers (those of DDP's buckets), buckets of ~25 MB all launched
    asynchronously and then waited on, so their transfers overlap each other. Every rank must pass
    tensors of the same shapes in the same order (e.g. gradients of a validation loss, as ABL's
    hypergradient needs)."""
    if not _active() or not tensors:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    w = dist.get_world_size()
    pending = []
    for bucket in _buckets(tensors):
        flat = _flatten_dense_tensors(bucket)
        pending.append((bucket, flat, dist.all_reduce(flat, async_op=True)))
    for bucket, flat, work in pending:
        work.wait()
        flat.div_(w)
        torch._foreach_copy_(bucket, list(_unflatten_dense_tensors(flat, bucket)))


def global_rows(local_rows: int) -> int:
    """The job's batch size: ``local_rows`` summed over the ranks."""
    if not _active():
        return int(local_rows)
    t = torch.tensor([int(local_rows)], dtype=torch.int64)
    dist.all_reduce(t, group=_control_group())
    return int(t.item())


def rank_share(draw: Callable[[int], Tensor], local_rows: int) -> Tensor:
    """This rank's rows of a random draw made for the whole job's batch.

    ``draw(n)`` returns n rows from a generator seeded identically on every rank. It is called with the
    global batch size G and rank r keeps rows ``r::W``: the rows of the samples this rank holds (the
    training shard is the strided ``perm[r::W]`` of the global batch), so the draw equals a 1-process
    run's and every rank's generator advances alike.
    """
    if not _active():
        return draw(local_rows)
    rows = draw(global_rows(local_rows))[dist.get_rank()::dist.get_world_size()]
    if rows.shape[0] != local_rows:
        raise AdakdError(f"rank {dist.get_rank()}: {local_rows} rows but the strided share of the global batch "
                         f"has {rows.shape[0]}; the ranks' batches must come from one sharded loader.")
    return rows


def sync_gradients(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Make every ``optimizer.step()`` average the gradients over the ranks first (a no-op hook in 1 process).

    Why explicit averaging and not ``DistributedDataParallel`` for these optimisers (SAKD's policy and main
    steps, ABL's block-wise and meta steps): DDP averages inside the backward of a ``module(...)`` call's
    output, through hooks on every parameter it wraps, once per forward. These steps take gradients with
    ``torch.autograd.grad`` (which does not accumulate into ``.grad``, so DDP's hooks average nothing, and
    ABL needs the separate, unmixed gradients of several losses), ``backward(inputs=...)`` on a subset (the
    policy's loss must not reach the student's buckets), or several backwards and optimiser steps per
    forward (ABL's virtual step, SAKD's policy then student step): DDP would reduce some of them twice or
    not at all, or fail with "Expected to mark a variable ready only once". Averaging right before each
    ``step()`` is exact for all of them; it runs after the backward (no overlap with it)."""
    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        all_reduce_grads(p for group in opt.param_groups for p in group["params"])

    if _active():
        optimizer.register_step_pre_hook(hook)
    return optimizer


def wrap_ddp(module: nn.Module, device: torch.device, find_unused_parameters: bool = False,
             layout_independent: bool = False) -> nn.Module:
    """``DistributedDataParallel(module)`` for a module trained through its ``forward`` (returned as is in
    1 process). Buffers are not broadcast each step (memory banks stay per rank; BatchNorm statistics are
    synchronised or averaged by the engine). ``find_unused_parameters``: some parameters may get no gradient
    in a step (DDP then walks the graph each forward to mark them). ``layout_independent`` (``train.deterministic``):
    at 3 ranks or more, reduce each gradient on its own (:func:`per_tensor_allreduce_hook`), so that a restarted
    job sums exactly as the uninterrupted one did."""
    if not _active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    wrapped = DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False,
                                      find_unused_parameters=find_unused_parameters,
                                      bucket_cap_mb=BUCKET_BYTES / 2**20)
    if layout_independent and dist.get_world_size() > 2:
        wrapped.register_comm_hook(None, per_tensor_allreduce_hook)
    return wrapped


def per_tensor_allreduce_hook(group, bucket):  # no annotations: DDP compares them with its own types
    """DDP communication hook (group, ``dist.GradBucket``) -> ``Future[Tensor]``: all-reduce each gradient of
    the bucket on its own, then divide by W.

    Why: a ring all-reduce (gloo, NCCL) sums element i of a buffer in an order that depends on i's position in
    the buffer (the rank where its chunk starts). DDP fills its buckets in parameter order for the first step
    and rebuilds them in the order the gradients became ready after it, so a job resumed at step k sums step k
    in the first layout where the uninterrupted job used the rebuilt one. With 2 ranks the order cannot matter
    (a + b = b + a); from 3 on it does: measured with gloo at 4 ranks, 25% of a buffer's elements differ
    in the last bit after a permutation, and a 4-rank job resumed at step 4 ended 6.1e-4 away at lr 0.01.
    Reduced tensor by tensor, each gradient's sum depends on that tensor alone: bitwise the same in any
    layout. Cost: one collective per parameter tensor instead of per 25 MB bucket, each waited for here (an
    async variant chained with ``collect_all`` was tried first; the process aborted at exit, later traced to
    the DDP outliving its process group, not to the async works; it was not tried again)."""
    group = group if group is not None else dist.group.WORLD
    for grad in bucket.gradients():  # views into the bucket's buffer
        dist.all_reduce(grad, group=group)
    done: torch.futures.Future = torch.futures.Future()
    done.set_result(bucket.buffer().div_(dist.get_world_size(group)))
    return done


# ---------------------------------------------------------------------------------- BatchNorm
class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks (CPU and GPU), differentiable end to end.

    With S1 = sum_r sum_i x, S2 = sum_r sum_i x^2 and n = sum_r n_r over the ranks (per channel):
        mu = S1 / n,   var = S2 / n - mu^2,   y = gamma * (x - mu) / sqrt(var + eps) + beta
    and the running statistics take the unbiased variance var * n / (n - 1), as ``nn.BatchNorm2d``
    does on one process with the whole batch (Ioffe & Szegedy, "Batch Normalization", ICML 2015).
    The all-reduce is torch's differentiable one (``torch.distributed.nn.functional.all_reduce``: its backward
    all-reduces the gradients), so the parameter gradients averaged over ranks equal those of the global
    batch. Used where ``torch.nn.SyncBatchNorm`` has no kernels (CPU); on CUDA that one is used.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _active()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        xd = x.double()  # float64 sums: S2 / n - mu^2 would cancel badly in float32
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device, dtype=torch.float64)
        stats = torch.cat([xd.sum(dims), (xd * xd).sum(dims), count])
        from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

        stats = differentiable_all_reduce(stats)
        c = x.shape[1]
        n = stats[2 * c]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = (var.detach() * n / (n - 1).clamp_min(1)).to(self.running_var.dtype)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype) * m)
                self.running_var.mul_(1 - m).add_(unbiased * m)
        shape = [1, c] + [1] * (x.dim() - 2)
        mean, var = mean.float(), var.float()
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm normalising over the global batch: ``nn.SyncBatchNorm.convert_sync_batchnorm``
    on CUDA, the same replacement with :class:`GlobalBatchNorm` elsewhere (torch has no CPU SyncBatchNorm).
    Children are replaced in place (the parameters and buffers are the same tensors, so optimisers and
    references to them stay valid); the returned module is ``model`` unless ``model`` is itself a BatchNorm."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_global(model)


def _convert_global(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        out = GlobalBatchNorm(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                              track_running_stats=module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        new = _convert_global(child)
        if new is not child:
            out.add_module(name, new)
    return out


def all_reduce_sums(values: list[Tensor]) -> list[Tensor]:
    """Sum scalars over the ranks (one all-reduce); returns them as float64 tensors."""
    if not _active():
        return values
    flat = torch.stack([v.to(torch.float64) for v in values])
    dist.all_reduce(flat)
    return list(flat.unbind())


def active() -> bool:
    """True inside an initialised multi-process job (not under :func:`local_only`)."""
    return _active()


def control_group() -> Any:
    """The gloo group for small control messages (flags, counts, objects), whatever the data backend."""
    return _control_group()


def all_gather_object(obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_control_group())
    return out


__all__ = [
    "DistInfo", "SINGLE", "launched_by_torchrun", "init_distributed", "shutdown_distributed", "current", "is_main",
    "rank", "world_size",
    "local_only", "rank_device", "barrier", "broadcast_object", "run_on_main", "agree_any", "agree_min",
    "all_finite", "all_reduce_mean", "all_gather_rows", "broadcast_module", "all_reduce_grads", "all_reduce_mean_",
    "global_rows", "rank_share", "sync_gradients",
    "wrap_ddp", "GlobalBatchNorm", "convert_sync_batchnorm", "all_reduce_sums", "active", "control_group",
    "all_gather_object",
]
