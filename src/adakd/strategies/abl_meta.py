"""ABL's meta variables: the hypergradient of the bilevel search (docs/methods.md section 1; the ABL paper's Eq. 6-9).

Inner step (optimiser step on the training batch with gamma fixed), block b < L-1:

    theta_b' = theta_b - eta * c * (g1_b * gS_b + g2_b * gKD_b) + (terms free of gamma)

with (g1_b, g2_b) = softmax(gamma_b), gS_b = alpha * dCE(phi_b(h_b))/dtheta_b, gKD_b = dL_KD/dtheta_b
(both at theta, independent of gamma) and c the optimiser's factor on the fresh gradient
(SGD: 1; with Nesterov momentum mu: 1 + mu; momentum buffers and weight decay do not
depend on gamma). theta' is LINEAR in (g1_b, g2_b), so the hypergradient is exact:

    dL_val(theta')/d(g1_b, g2_b) = -eta * c * (gS_b . v_b, gKD_b . v_b),   v = dL_val/dtheta at theta'

then through the softmax Jacobian: dL/dgamma_b = p * (d - <p, d>). No finite differences,
no extra passes: one forward/backward on the validation batch at theta'.

Options:
* ``darts``: the paper's (DARTS) finite-difference form,
      dL/dp ~ -eta * c * (dL_train/dp(theta+) - dL_train/dp(theta-)) / (2 xi),
      theta+- = theta +- xi * v, xi = 0.01 / ||v||,
  with L_train = sum_b g1_b alpha CE_b + g2_b L_KD, so dL_train/dg1_b = alpha CE_b and
  dL_train/dg2_b = L_KD: two extra forward passes. It perturbs ALL parameters at once, so
  block b's entry also sees the other blocks' directions (CE_b depends on blocks <= b, L_KD
  on every block): it mixes the blocks, which the exact form does not.
* ``first_order``: v taken at theta instead of theta' (L_val(theta') ~ L_val(theta) +
  v . (theta' - theta)); no virtual step. (DARTS's own first-order variant, dL_val/dgamma
  at fixed theta, is identically 0 here: L_val does not depend on gamma directly.)

With AdamW the update is not linear in the gradient; c = 1 is then a linearisation.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .abl_gradients import BlockGrads

HYPERGRADIENTS = ("exact", "darts", "first_order")


def step_coefficients(optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter]) -> list[float]:
    """eta * c per parameter: minus the derivative of the next step's theta' w.r.t. its fresh gradient.

    Read BEFORE the step (c depends on whether a momentum buffer exists yet)."""
    group_of = {id(q): g for g in optimizer.param_groups for q in g["params"]}
    out = []
    for q in params:
        group = group_of.get(id(q))
        if group is None:
            out.append(0.0)
            continue
        c = 1.0
        if isinstance(optimizer, torch.optim.SGD) and group.get("momentum", 0.0):
            mu, damp = group["momentum"], group.get("dampening", 0.0)
            has_buffer = optimizer.state.get(q, {}).get("momentum_buffer") is not None
            k = (1.0 - damp) if has_buffer else 1.0
            c = 1.0 + mu * k if group.get("nesterov", False) else k
        out.append(float(group["lr"]) * c)
    return out


def softmax_backward(probs: Tensor, d_probs: Tensor) -> Tensor:
    """dL/dgamma from dL/dp for p = softmax(gamma) along the last dim."""
    return probs * (d_probs - (probs * d_probs).sum(-1, keepdim=True))


def _dot(a: Sequence[Tensor], b: Sequence[Tensor], coefs: Sequence[float]) -> Tensor:
    """sum_p coef_p * (a_p . b_p), in float64 when the gradients are float64, else float32."""
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in a) else torch.float32
    total = torch.zeros((), device=a[0].device if a else "cpu", dtype=dtype)
    for x, y, c in zip(a, b, coefs):
        if c:
            total = total + c * (x.to(dtype) * y.to(dtype)).sum()
    return total


def exact_hypergradient(grads: BlockGrads, v: list[list[Tensor]], coefs: list[list[float]]) -> Tensor:
    """dL_val/dp [L-1, 2] for p = (g1_b, g2_b): -eta c (gS_b . v_b, gKD_b . v_b)."""
    rows = []
    for b in range(len(grads.student) - 1):
        rows.append(torch.stack([-_dot(grads.student[b], v[b], coefs[b]), -_dot(grads.teacher[b], v[b], coefs[b])]))
    return torch.stack(rows)


def darts_hypergradient(plus: tuple[list[Tensor], Tensor], minus: tuple[list[Tensor], Tensor], ce_weight: float,
                        xi: float, eta_c: float) -> Tensor:
    """dL_val/dp [L-1, 2] from the losses (local CEs, L_KD) at theta + xi v and theta - xi v."""
    local_p, kd_p = plus
    local_m, kd_m = minus
    d1 = ce_weight * (torch.stack(local_p) - torch.stack(local_m)) / (2 * xi)
    d2 = ((kd_p - kd_m) / (2 * xi)).expand_as(d1)
    return -eta_c * torch.stack([d1, d2], dim=-1)


class OptimizerSnapshot:
    """Parameters and optimiser state before the virtual step, restored before the real one."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.params = [q for g in optimizer.param_groups for q in g["params"]]
        with torch.no_grad():
            self.values = [q.detach().clone() for q in self.params]
        self.state = {q: {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in optimizer.state[q].items()}
                      for q in self.params if q in optimizer.state}

    @torch.no_grad()
    def set_params(self, values: Sequence[Tensor]) -> None:
        torch._foreach_copy_(self.params, list(values))

    def restore(self) -> None:
        self.set_params(self.values)
        for q in self.params:
            if q in self.state:
                self.optimizer.state[q] = self.state[q]
            else:
                self.optimizer.state.pop(q, None)


@contextlib.contextmanager
def frozen_bn_stats(*modules: nn.Module | None) -> Iterator[None]:
    """Train-mode BatchNorm (batch statistics) that leaves the running statistics untouched."""
    bns = [m for mod in modules if mod is not None for m in mod.modules() if isinstance(m, _BatchNorm)]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


@contextlib.contextmanager
def preserved_buffers(module: nn.Module | None) -> Iterator[None]:
    """Restore ``module``'s buffers afterwards (e.g. CRD's memory bank during the extra DARTS passes)."""
    if module is None:
        yield
        return
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)
