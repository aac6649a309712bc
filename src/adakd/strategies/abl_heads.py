"""ABL's auxiliary networks phi_l: one classifier per student block but the last.

ABL (Li et al., "Adaptive Block-wise Learning for Knowledge Distillation") computes the
student's error of block l locally, L_hat_l = CE(phi_l(h_l), y). The paper's head (its
Table 11 "Aux3", the default) is

    1x1 conv -> depthwise 3x3 conv -> global average pool -> FC(C)

(each conv followed by BN + ReLU, as in the local-learning heads it builds on). The other
variants of Table 11:

    aux1: global average pool -> FC
    aux2: average pool (to 4x4) -> 3 x (1x1 conv) -> global average pool -> 3-layer MLP
    aux4: aux3 + one MobileNetV2 inverted residual block (expansion 6) before the pool

A block whose output is a vector ([B, D]) gets a linear classifier whatever the variant.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

AUX_VARIANTS = ("aux1", "aux2", "aux3", "aux4")


def resolve_aux(name: str) -> str:
    name = str(name).lower()
    if name == "default":
        return "aux3"
    if name not in AUX_VARIANTS:
        raise ConfigError(f"strategy.options.aux={name!r} is not an ABL auxiliary head; use one of "
                          f"{', '.join(AUX_VARIANTS)} (aux3 = the paper's default).")
    return name


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, groups: int = 1, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block at stride 1: 1x1 expand -> depthwise 3x3 -> 1x1 project, plus the input."""

    def __init__(self, channels: int, expansion: int = 6) -> None:
        super().__init__()
        hidden = channels * expansion
        self.body = nn.Sequential(
            _conv_bn_relu(channels, hidden, 1, act=nn.ReLU6),
            _conv_bn_relu(hidden, hidden, 3, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class AuxHead(nn.Module):
    """phi_l: block output [B, C, H, W] (or [B, D]) -> logits [B, num_classes]."""

    def __init__(self, variant: str, channels: int, num_classes: int, spatial: bool = True) -> None:
        super().__init__()
        self.variant = resolve_aux(variant)
        c = channels
        self.features: nn.Module = nn.Identity()
        self.pre_pool = 0  # >0: average-pool to this size before the convs (aux2)
        if not spatial:
            self.classifier: nn.Module = nn.Linear(c, num_classes)
            return
        if self.variant == "aux1":
            self.classifier = nn.Linear(c, num_classes)
        elif self.variant == "aux2":
            self.pre_pool = 4
            self.features = nn.Sequential(*[_conv_bn_relu(c, c, 1) for _ in range(3)])
            self.classifier = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, c),
                                            nn.ReLU(inplace=True), nn.Linear(c, num_classes))
        else:
            layers = [_conv_bn_relu(c, c, 1), _conv_bn_relu(c, c, 3, groups=c)]
            if self.variant == "aux4":
                layers.append(InvertedResidual(c))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(c, num_classes)

    def forward(self, h: Tensor) -> Tensor:
        if h.dim() == 4:
            if self.pre_pool and h.shape[-1] > self.pre_pool:
                h = F.adaptive_avg_pool2d(h, self.pre_pool)
            h = torch.flatten(F.adaptive_avg_pool2d(self.features(h), 1), 1)
        return self.classifier(h)


def build_aux_heads(block_shapes: list[tuple[int, ...]], num_classes: int, variant: str) -> nn.ModuleList:
    """One head per block output shape (per-sample shapes, no batch dim)."""
    heads = []
    for shape in block_shapes:
        if len(shape) not in (1, 3):
            raise ConfigError(f"ABL: a block output of shape {shape} is neither [C, H, W] nor [D]; "
                              "the auxiliary heads need one of those.")
        heads.append(AuxHead(variant, shape[0], num_classes, spatial=len(shape) == 3))
    return nn.ModuleList(heads)
