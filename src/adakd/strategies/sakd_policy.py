"""SAKD's routing policy: where to distil, per sample and per spot (docs/methods.md section 3).

    logits = W [stopgrad(pooled_T), stopgrad(pooled_S)] + b           -> [B, S, 2]
    y      = hard Gumbel-softmax(logits, tau) with straight-through    -> one-hot forward, soft gradient
    a[n,i] = y[n, i, 0]   (1 = distil sample n at spot i, 0 = do not)

The hard sample is ``argmax(logits + g)`` with Gumbel noise ``g``, so the probability that a
sample is distilled at a spot is ``softmax(logits)[..., 0]`` whatever ``tau`` (the Gumbel-max
trick); ``tau`` only shapes the straight-through gradient. Same-family pairs start at
"distil everywhere" (``+init_bias`` on the first logit of every pair).

Jang, Gu, Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017;
Song et al., "Spot-Adaptive Knowledge Distillation", IEEE TIP 2022.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Added inside the logs of the Gumbel sampler (no log(0)).
GUMBEL_EPS = 1e-20


def gumbel_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard Gumbel samples ``-log(-log(u))``, ``u ~ U[0, 1)`` drawn from ``generator``."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return -torch.log(-torch.log(u + GUMBEL_EPS) + GUMBEL_EPS)


def straight_through_gumbel_softmax(logits: Tensor, temperature: float, generator: torch.Generator | None = None,
                                    noise: Tensor | None = None) -> Tensor:
    """Hard one-hot samples over the last dim whose gradient is that of the soft sample.

        y_soft = softmax((logits + g) / tau),   y_hard = one_hot(argmax y_soft)
        y      = y_hard - stopgrad(y_soft) + y_soft

    ``noise`` (the Gumbel ``g``) may be given instead of drawing it from ``generator``.
    """
    if noise is None:
        noise = gumbel_noise(logits.shape, generator, logits.device, logits.dtype)
    y_soft = F.softmax((logits + noise) / temperature, dim=-1)
    index = y_soft.argmax(dim=-1, keepdim=True)
    y_hard = torch.zeros_like(y_soft).scatter_(-1, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


class RoutingPolicy(nn.Module):
    """One linear layer over the detached pooled features of teacher and student -> [B, spots, 2]."""

    def __init__(self, teacher_dim: int, student_dim: int, num_spots: int, distil_everywhere: bool,
                 init_bias: float = 10.0) -> None:
        super().__init__()
        self.num_spots = int(num_spots)
        self.linear = nn.Linear(int(teacher_dim) + int(student_dim), 2 * self.num_spots)
        if distil_everywhere:
            with torch.no_grad():
                self.linear.bias.view(self.num_spots, 2)[:, 0].add_(float(init_bias))

    def forward(self, teacher_pooled: Tensor, student_pooled: Tensor) -> Tensor:
        """Routing logits [B, S, 2] (float32, outside autocast); the inputs are detached."""
        with torch.autocast(device_type=student_pooled.device.type, enabled=False):
            z = torch.cat([teacher_pooled.detach().flatten(1).float(), student_pooled.detach().flatten(1).float()], 1)
            return self.linear(z).view(z.shape[0], self.num_spots, 2)

    def distil_probability(self, teacher_pooled: Tensor, student_pooled: Tensor) -> Tensor:
        """P(a = 1) per sample and spot [B, S]: ``softmax(logits)[..., 0]`` (the hard sampler's law)."""
        return F.softmax(self.forward(teacher_pooled, student_pooled), dim=-1)[..., 0]
