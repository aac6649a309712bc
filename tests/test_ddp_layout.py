"""DDP's gradient sums do not depend on its bucket layout under ``train.deterministic`` (3 ranks or more).

A ring all-reduce sums each element in an order set by its position in the bucket; DDP uses one bucket layout
for the first step and a rebuilt one after it, so a job resumed at step k summed step k differently from the
uninterrupted job (4 ranks: 6.1e-4 apart at the end, issue 29). ``runtime.distributed.per_tensor_allreduce_hook``
reduces gradient by gradient. Here 3 gloo ranks take the same step twice, in the first layout and then in the
rebuilt one: with the hook the two steps' gradients are bitwise equal and equal the per-tensor reference; without
it they differ, which shows that this model's two layouts differ (else the test would prove nothing)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from adakd.runtime.distributed import per_tensor_allreduce_hook, wrap_ddp
from test_ddp import free_port

WORLD = 3


class UsedOutOfOrder(nn.Module):
    """Registered head first, used last: DDP's first layout (registration order) is not its rebuilt one
    (the order gradients become ready)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)
        self.body = nn.Sequential(nn.Linear(20, 300), nn.Tanh(), nn.Linear(300, 64), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _grads_of_two_steps(module: nn.Module, x: torch.Tensor) -> list[list[torch.Tensor]]:
    steps = []
    for _ in range(2):  # the same batch twice: step 1 in the first layout, step 2 in the rebuilt one
        module.zero_grad()
        module(x).pow(2).mean().backward()
        steps.append([p.grad.clone() for p in module.parameters()])
    return steps


def _worker(rank: int, port: int, results: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    x = torch.randn(32, 20, generator=torch.Generator().manual_seed(rank)) * 3
    out = {}
    for hooked in (True, False):
        torch.manual_seed(0)
        plain = UsedOutOfOrder()
        ddp = wrap_ddp(plain, torch.device("cpu"), layout_independent=hooked)
        assert isinstance(ddp, nn.parallel.DistributedDataParallel)
        out[hooked] = _grads_of_two_steps(ddp, x)
        del ddp  # a DDP with a comm hook must not outlive its process group (trainer: phase.forward.unwrap)
    torch.manual_seed(0)
    plain = UsedOutOfOrder()
    plain(x).pow(2).mean().backward()
    reference = []
    for p in plain.parameters():
        total = p.grad.clone()
        dist.all_reduce(total)
        reference.append(total / WORLD)
    if rank == 0:
        results.update({"hooked": out[True], "plain": out[False], "reference": reference})
    dist.destroy_process_group()


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b))


def test_three_ranks_sum_the_same_in_both_bucket_layouts():
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), results), nprocs=WORLD, join=True)
    hooked, plain = results["hooked"], results["plain"]
    assert _equal(hooked[0], hooked[1]), "with the hook, the first and the rebuilt layout must sum bitwise alike"
    assert _equal(hooked[0], results["reference"])  # and as each tensor all-reduced alone, divided by W
    assert not _equal(plain[0], plain[1]), "the two layouts sum alike even without the hook: the test is moot"
    gap = max((u - v).abs().max().item() for u, v in zip(plain[0], hooked[0]))
    assert gap < 1e-6  # without the hook the sums differ by rounding only


def test_the_hook_is_registered_only_from_three_ranks_on(monkeypatch):
    """At 2 ranks a + b = b + a: the bucketed all-reduce is already layout-independent (and faster)."""
    calls = []
    monkeypatch.setattr(nn.parallel.DistributedDataParallel, "register_comm_hook",
                        lambda self, state, hook: calls.append(hook))
    monkeypatch.setattr("adakd.runtime.distributed._active", lambda: True)
    monkeypatch.setattr(nn.parallel.DistributedDataParallel, "__init__", lambda self, module, **kw: None)
    for world, hooked, expected in ((2, True, 0), (3, False, 0), (3, True, 1), (4, True, 2)):
        monkeypatch.setattr(dist, "get_world_size", lambda group=None, w=world: w)
        wrap_ddp(nn.Linear(2, 2), torch.device("cpu"), layout_independent=hooked)
        assert len(calls) == expected, (world, hooked)
    assert calls == [per_tensor_allreduce_hook] * 2
