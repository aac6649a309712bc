"""CIFAR ResNets with basic blocks: resnet8 ... resnet110, resnet8x4, resnet32x4.

The architectures of the CRD code base (RepDistiller ``models/resnet.py``), which every
CIFAR-100 KD table uses: a 3x3 stem conv-BN-ReLU, three stages of ``n = (depth - 2) / 6``
basic blocks (the first block of stages 2 and 3 has stride 2 and a 1x1 conv-BN shortcut),
global average pooling and a linear classifier.

    block(x) = ReLU( BN(conv3x3(ReLU(BN(conv3x3(x))))) + shortcut(x) )

Widths: stem 16, stages 16/32/64 (resnet8x4, resnet32x4: stem 32, stages 64/128/256).
Units: ``units[0]`` is the stem, then one unit per basic block; each stage ends with a ReLU, so
its pre-activation output is the residual sum before that ReLU.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import MODELS
from .init import init_weights
from .contract import ContractModel

PAPER = "He, Zhang, Ren, Sun, Deep Residual Learning for Image Recognition, CVPR 2016"


class ConvBNReLU(nn.Module):
    """One conv -> BN -> ReLU unit, optionally preceded by a 2x2 max-pool.

    ``forward_preact`` returns ``(ReLU(BN(conv(x))), BN(conv(x)))``. Used as the stem of most
    zoo models and as the VGG unit.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, bias: bool = False, pool_first: bool = False) -> None:
        super().__init__()
        self.pool: nn.Module = nn.MaxPool2d(kernel_size=2, stride=2) if pool_first else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self.bn(self.conv(self.pool(x)))
        return F.relu(pre), pre

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(self.pool(x))), inplace=True)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """The 1x1 conv-BN shortcut used where the shape changes (option B of He et al.)."""
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """ReLU(BN(conv3x3(ReLU(BN(conv3x3(x))))) + shortcut(x)); pre-activation = the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = (
            projection_shortcut(in_planes, planes, stride) if stride != 1 or in_planes != planes else None
        )

    def _sum(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self._sum(x)
        return F.relu(pre), pre

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self._sum(x), inplace=True)


def resolve_widths(widths: Sequence[int] | None, default: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """``widths`` as (stem, stage1, stage2, stage3); a 3-tuple means the stem has the first stage's width."""
    if widths is None:
        return default
    widths = tuple(widths) if not isinstance(widths, (str, bytes)) else (widths,)
    if len(widths) == 3:
        widths = (widths[0], *widths)
    if len(widths) != 4 or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ConfigError(f"resnet widths must be 3 positive ints (stage widths) or 4 (stem first), got {widths!r}; "
                          "e.g. widths: [32, 64, 128].")
    return widths  # type: ignore[return-value]


class CifarResNet(ContractModel):
    """CIFAR ResNet of depth ``6n + 2`` with basic blocks (RepDistiller ``models/resnet.py``).

    Stages: stem (conv3x3-BN-ReLU), then three stages of n blocks at strides 1, 2, 2.
    Head: global average pool -> Linear(widths[3], num_classes).
    """

    family = "resnet"

    def __init__(self, depth: int, widths: Sequence[int] = (16, 16, 32, 64), num_classes: int = 100,
                 in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}.")
        n = (depth - 2) // 6
        stem_width, *stage_widths = resolve_widths(widths, (16, 16, 32, 64))
        units: list[nn.Module] = [ConvBNReLU(in_channels, stem_width, 3)]
        stage_ends = [0]
        in_planes = stem_width
        for s, planes in enumerate(stage_widths):
            for i in range(n):
                units.append(BasicBlock(in_planes, planes, stride=2 if s > 0 and i == 0 else 1))
                in_planes = planes
            stage_ends.append(len(units) - 1)
        self.units = nn.ModuleList(units)
        self.stage_ends = stage_ends
        self.fc = nn.Linear(in_planes, num_classes)
        self.input_shape = (in_channels, image_size, image_size)
        self.depth = depth
        init_weights(self)

    def reference_modules(self) -> dict[str, str]:
        """Our module paths -> RepDistiller's (``conv1``/``bn1``, ``layer{s}.{i}``, ``fc``); models/foreign.py."""
        return {"units.0.conv": "conv1", "units.0.bn": "bn1", "fc": "fc", **stage_block_names(self, "layer{}.{}")}

    def preact_bns(self) -> list[nn.Module | None]:
        # Stages after the stem: the last block's bn2 (its pre-activation is bn2 + shortcut;
        # RepDistiller/mdistiller take bn2 for OFD's margin as well).
        return [self.units[0].bn] + [self.units[e].bn2 for e in self.stage_ends[1:]]


def stage_block_names(model: ContractModel, pattern: str) -> dict[str, str]:
    """``{"units.<u>": pattern.format(stage, index)}`` for every block: stages count from 1, blocks
    within a stage from 0 (``layer2.0`` is the first block of the second stage)."""
    names = {}
    for stage in range(1, len(model.stage_ends)):
        start, end = model.stage_unit_range(stage)
        for index, unit in enumerate(range(start, end)):
            names[f"units.{unit}"] = pattern.format(stage, index)
    return names


def _builder(name: str, depth: int, default_widths: tuple[int, int, int, int]) -> Callable[..., CifarResNet]:
    def build(num_classes: int = 100, in_channels: int = 3, image_size: int = 32,
              widths: Sequence[int] | None = None) -> CifarResNet:
        return CifarResNet(depth, resolve_widths(widths, default_widths), num_classes, in_channels, image_size)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"CIFAR ResNet-{depth}; ``widths=`` overrides the stage widths "
                     "(3 values, or 4 with the stem first).")
    return build


_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)
_SMALL_DESC = "CIFAR ResNet-{}, basic blocks, widths 16/32/64"
_X4_DESC = "CIFAR ResNet-{}, basic blocks, 32-channel stem, widths 64/128/256"

resnet8 = MODELS.register("resnet8", _SMALL_DESC.format(8), PAPER)(_builder("resnet8", 8, _SMALL))
resnet14 = MODELS.register("resnet14", _SMALL_DESC.format(14), PAPER)(_builder("resnet14", 14, _SMALL))
resnet20 = MODELS.register("resnet20", _SMALL_DESC.format(20), PAPER)(_builder("resnet20", 20, _SMALL))
resnet32 = MODELS.register("resnet32", _SMALL_DESC.format(32), PAPER)(_builder("resnet32", 32, _SMALL))
resnet44 = MODELS.register("resnet44", _SMALL_DESC.format(44), PAPER)(_builder("resnet44", 44, _SMALL))
resnet56 = MODELS.register("resnet56", _SMALL_DESC.format(56), PAPER)(_builder("resnet56", 56, _SMALL))
resnet110 = MODELS.register("resnet110", _SMALL_DESC.format(110), PAPER)(_builder("resnet110", 110, _SMALL))
resnet8x4 = MODELS.register("resnet8x4", _X4_DESC.format(8), PAPER)(_builder("resnet8x4", 8, _X4))
resnet32x4 = MODELS.register("resnet32x4", _X4_DESC.format(32), PAPER)(_builder("resnet32x4", 32, _X4))
