"""ABL's block-wise gradients (docs/methods.md section 1; the ABL paper's Eq. 4-5).

Blocks: the student's units, the stem joined to the first block, the head (embed + fc)
joined to the last: b = 0..L-1 with L = len(units) - 1. Every block b < L-1 has an
auxiliary head phi_b. With (g1_b, g2_b) = softmax(gamma_b), alpha the CE weight and
L_KD the (already weighted) distillation loss, block b's parameters receive

    b <  L-1:  g1_b * alpha * dCE(phi_b(h_b), y)/dtheta_b  +  g2_b * dL_KD/dtheta_b
    b == L-1:  alpha * dCE(z, y)/dtheta_b  +  dL_KD/dtheta_b

phi_b receives g1_b * alpha * dCE(phi_b(h_b), y)/dphi_b, the distiller's own modules
dL_KD/d(connectors). The local error never reaches earlier blocks; the teacher error that
reaches block b is the true global gradient dL_KD/dh_b (not scaled by later gammas).
With ``student_error="global"`` the student error is the final CE back-propagated
through the whole student instead (the paper's "global" ablation, Table 5).

Two ways to get them from ONE forward pass (:func:`abl_forward`):

* :func:`separate_gradients` -- gS_b and gKD_b apart (the bilevel search needs both for
  its hypergradient): one full backward of L_KD plus, per block, ``autograd.grad`` of its
  local loss over its own parameters (which does not walk into earlier blocks).
* :func:`mixed_backward` -- gamma fixed, straight into ``.grad``, cheaper: one backward of
  L_KD computing *input* gradients only (the true dL_KD/dh at every block boundary and the
  direct dL_KD/df at every feature the distiller reads), then one backward per block of
  g2_b * (those gradients) + g1_b * alpha * CE_b restricted to the block's and head's
  parameters. Weight gradients are computed once per parameter instead of twice.

Features the distiller reads are handed to it as *taps* (identity views), so the
gradient the distiller sends into a feature is available apart from what flows there
from later blocks; the next block reads its own view of the block output (the boundary).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from ..errors import ConfigError
from ..models.contract import ContractModel, Features
from ..runtime.device import at_least_float32

Grads = list[Tensor]


def _tap(t: Tensor) -> Tensor:
    """An identity view of ``t``: its gradient is what its own readers send, nothing else."""
    return t.view_as(t)


def _run_unit(unit: nn.Module, h: Tensor, want_preact: bool) -> tuple[Tensor, Tensor]:
    if want_preact and hasattr(unit, "forward_preact"):
        return unit.forward_preact(h)
    out = unit(h)
    return out, out


def check_blocks(student: nn.Module) -> int:
    """Number of ABL blocks L (>= 2), or a ConfigError naming the fix."""
    units = getattr(student, "units", None)
    if not isinstance(student, ContractModel) or not isinstance(units, nn.ModuleList):
        raise ConfigError("strategy abl needs a student with the feature contract's units (a zoo model or a "
                          "ContractModel subclass); a HookedModel cannot run its blocks one by one.")
    if len(units) < 3:
        raise ConfigError(f"strategy abl needs a student with at least 2 blocks after the stem; "
                          f"{type(student).__name__} has {len(units) - 1}. Use a deeper student.")
    return len(units) - 1


def block_of_unit(unit_index: int) -> int:
    """ABL block holding ``units[unit_index]`` (the stem belongs to block 0)."""
    return max(unit_index - 1, 0)


def block_parameters(student: ContractModel) -> list[list[nn.Parameter]]:
    """Trainable parameters per ABL block; the last block also holds everything outside units[:-1]."""
    num_blocks = check_blocks(student)
    groups: list[list[nn.Parameter]] = [[] for _ in range(num_blocks)]
    seen: set[int] = set()
    for i, unit in enumerate(list(student.units)[:-1]):
        for p in unit.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                groups[block_of_unit(i)].append(p)
    groups[-1] = [p for p in student.parameters() if p.requires_grad and id(p) not in seen]
    return groups


@dataclass
class ABLPass:
    """One instrumented forward pass of the student (see the module docstring)."""

    features: Features  # tapped: what the distiller reads
    logits: Tensor  # untapped final logits: the last block's CE
    block_out: list[Tensor]  # raw output of block b < L-1 (the auxiliary head reads it)
    boundaries: list[Tensor]  # boundaries[b]: block b+1's input (a view of block_out[b])
    taps: list[list[Tensor]]  # taps[b]: the distiller's feature views produced inside block b
    aux_logits: list[Tensor] = field(default_factory=list)


def abl_forward(student: ContractModel, x: Tensor, heads: Sequence[nn.Module] = ()) -> ABLPass:
    """Run the student unit by unit (same arithmetic as ``forward_features``), recording block
    outputs, boundaries and feature taps; ``heads`` (may be empty) read the block outputs."""
    units = list(student.units)
    last_unit = len(units) - 1
    num_blocks = last_unit
    ends = set(student.stage_ends)
    stages: list[Tensor] = []
    preacts: list[Tensor] = []
    taps: list[list[Tensor]] = [[] for _ in range(num_blocks)]
    block_out: list[Tensor] = []
    boundaries: list[Tensor] = []
    h = x
    for i, unit in enumerate(units):
        h, pre = _run_unit(unit, h, i in ends)
        b = block_of_unit(i)
        if i in ends:
            stage, preact = _tap(h), _tap(pre)
            stages.append(stage)
            preacts.append(preact)
            taps[b] += [stage, preact]
        if 1 <= i < last_unit:  # end of block b = i - 1 (not the last block)
            block_out.append(h)
            h = _tap(h)
            boundaries.append(h)
    pooled, logits = student.head(h)
    pooled_tap, logits_tap = _tap(pooled), _tap(logits)
    taps[-1] += [pooled_tap, logits_tap]
    features = Features(logits=logits_tap, stages=stages, preact_stages=preacts, pooled=pooled_tap)
    with record_function("abl/aux_heads_forward"):
        aux = [head(o) for head, o in zip(heads, block_out)]
    return ABLPass(features, logits, block_out, boundaries, taps, aux)


def local_losses(p: ABLPass, labels: Tensor) -> list[Tensor]:
    """CE(phi_b(h_b), y) per auxiliary head (unweighted, at least float32)."""
    return [F.cross_entropy(at_least_float32(z), labels) for z in p.aux_logits]


def _grad(outputs: Tensor | None, inputs: Sequence[Tensor], retain: bool) -> list[Tensor | None]:
    if outputs is None or not outputs.requires_grad or not inputs:
        return [None] * len(inputs)
    return list(torch.autograd.grad(outputs, list(inputs), retain_graph=retain, allow_unused=True))


def _zeros_for(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Grads:
    return [torch.zeros_like(q) if g is None else g for g, q in zip(grads, params)]


@dataclass
class BlockGrads:
    """gS[b], gKD[b] (per parameter of block b), head grads (alpha * dCE_b/dphi_b, not yet
    scaled by g1_b) and connector grads dL_KD/d(connectors)."""

    student: list[Grads]
    teacher: list[Grads]
    heads: list[Grads]
    connectors: Grads


def separate_gradients(p: ABLPass, kd: Tensor | None, ce: Tensor, local: Sequence[Tensor], ce_weight: float,
                       blocks: list[list[nn.Parameter]], heads: Sequence[nn.Module],
                       connectors: Sequence[nn.Parameter], student_error: str = "local") -> BlockGrads:
    """gS_b and gKD_b apart, from the graph of one forward pass (frees the graph)."""
    flat = [q for group in blocks for q in group]
    sizes = [len(g) for g in blocks]

    def split(grads: Sequence[Tensor | None]) -> list[Grads]:
        out, start = [], 0
        for group, n in zip(blocks, sizes):
            out.append(_zeros_for(grads[start:start + n], group))
            start += n
        return out

    kd_all = _grad(kd, flat + list(connectors), retain=True)
    teacher = split(kd_all[:len(flat)])
    conn = _zeros_for(kd_all[len(flat):], connectors)
    head_grads: list[Grads] = []
    if student_error == "global":
        student = split(_grad(ce_weight * ce, flat, retain=False))
        head_grads = [[torch.zeros_like(q) for q in h.parameters()] for h in heads]
    else:
        student = []
        for b, loss in enumerate(local):
            hp = list(heads[b].parameters())
            g = _grad(ce_weight * loss, blocks[b] + hp, retain=False)
            student.append(_zeros_for(g[:len(blocks[b])], blocks[b]))
            head_grads.append(_zeros_for(g[len(blocks[b]):], hp))
        student.append(_zeros_for(_grad(ce_weight * ce, blocks[-1], retain=False), blocks[-1]))
    return BlockGrads(student, teacher, head_grads, conn)


def _accumulate(params: Sequence[nn.Parameter], grads: Sequence[Tensor]) -> None:
    for q, g in zip(params, grads):
        q.grad = g if q.grad is None else q.grad + g


def apply_mixed(grads: BlockGrads, probs: Tensor, blocks: list[list[nn.Parameter]],
                heads: Sequence[nn.Module], connectors: Sequence[nn.Parameter]) -> None:
    """Write g1_b * gS_b + g2_b * gKD_b (last block: gS + gKD), g1_b * head grads and the
    connector grads into ``.grad`` (which the caller has zeroed)."""
    last = len(blocks) - 1
    for b, params in enumerate(blocks):
        if b < last:
            g1, g2 = probs[b, 0], probs[b, 1]
            mixed = [g1 * s + g2 * t for s, t in zip(grads.student[b], grads.teacher[b])]
        else:
            mixed = [s + t for s, t in zip(grads.student[b], grads.teacher[b])]
        _accumulate(params, mixed)
    for b, head in enumerate(heads):
        if grads.heads and b < len(grads.heads):
            _accumulate(list(head.parameters()), [probs[b, 0] * g for g in grads.heads[b]])
    _accumulate(connectors, grads.connectors)


def mixed_backward(p: ABLPass, kd: Tensor | None, ce: Tensor, local: Sequence[Tensor], ce_weight: float,
                   probs: Tensor, blocks: list[list[nn.Parameter]], heads: Sequence[nn.Module],
                   connectors: Sequence[nn.Parameter], student_error: str = "local") -> None:
    """Accumulate the block-wise gradients for fixed ``probs`` [L-1, 2] into ``.grad``."""
    num_blocks = len(blocks)
    flat_taps = [t for group in p.taps for t in group]
    nb = len(p.boundaries)
    # 1. input gradients of L_KD only (no weight gradients) + the connectors' gradients
    kd_grads = _grad(kd, p.boundaries + flat_taps + list(connectors), retain=True)
    kd_bound, kd_taps = kd_grads[:nb], kd_grads[nb:nb + len(flat_taps)]
    _accumulate(connectors, _zeros_for(kd_grads[nb + len(flat_taps):], connectors))
    ce_bound: list[Tensor | None] = [None] * nb
    if student_error == "global":
        ce_bound = _grad(ce_weight * ce, p.boundaries, retain=True)
    # 2. per block: its own parameters (and head) from the mixed signal
    tap_iter = iter(kd_taps)
    for b in range(num_blocks):
        outs: list[Tensor] = []
        grads: list[Tensor] = []
        scale = probs[b, 1] if b < num_blocks - 1 else None
        for t in p.taps[b]:
            d = next(tap_iter)
            if d is not None:
                outs.append(t)
                grads.append(d if scale is None else (scale * d).to(d.dtype))
        inputs = list(blocks[b])
        if b < num_blocks - 1:
            d = None
            if kd_bound[b] is not None:
                d = scale * kd_bound[b]
            if ce_bound[b] is not None:
                d = probs[b, 0] * ce_bound[b] if d is None else d + probs[b, 0] * ce_bound[b]
            if d is not None:
                outs.append(p.boundaries[b])
                grads.append(d.to(p.boundaries[b].dtype))
            if student_error != "global":
                outs.append(local[b])
                grads.append(probs[b, 0].detach() * ce_weight)
                inputs += list(heads[b].parameters())
        else:
            outs.append(ce)
            grads.append(torch.full_like(ce, ce_weight))
        outs_req = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
        if outs_req and inputs:
            torch.autograd.backward([o for o, _ in outs_req], [g for _, g in outs_req], inputs=inputs)
