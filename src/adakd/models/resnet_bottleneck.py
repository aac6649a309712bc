"""ResNet-50 and ResNet-18 for small inputs (RepDistiller / mdistiller ``models/cifar/resnetv2.py``).

Stem conv3x3(64)-BN-ReLU at stride 1 (no max-pool), then four stages at strides 1, 2, 2, 2 with
64, 128, 256, 512 (mid) channels, global average pooling and a linear classifier.
ResNet-50: 3, 4, 6, 3 bottleneck blocks (x4 output channels, Linear(2048, C)):

    block(x) = ReLU( BN(conv1x1(ReLU(BN(conv3x3_s(ReLU(BN(conv1x1(x)))))))) + shortcut(x) )

ResNet-18: 2, 2, 2, 2 basic blocks (resnet_cifar.BasicBlock, Linear(512, C)); mdistiller's CIFAR-100
student and, at 64x64 with 200 classes, its Tiny-ImageNet teacher (``ResNet18_vanilla/ti_res18``).

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import MODELS
from .contract import ContractModel
from .init import init_weights
from .resnet_cifar import PAPER, BasicBlock, ConvBNReLU, projection_shortcut, stage_block_names


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (x4 channels) with BN, plus a shortcut; pre-activation = the sum."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module | None = (
            projection_shortcut(in_planes, out_planes, stride) if stride != 1 or in_planes != out_planes else None
        )

    def _sum(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return out + (x if self.shortcut is None else self.shortcut(x))

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self._sum(x)
        return F.relu(pre), pre

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self._sum(x), inplace=True)


class ResNetV2(ContractModel):
    """ResNet with a CIFAR (3x3, stride-1) stem; stages after the stem = ``num_blocks`` blocks of ``block``
    (:class:`Bottleneck` or ``resnet_cifar.BasicBlock``)."""

    family = "resnet"

    def __init__(self, num_blocks: Sequence[int] = (3, 4, 6, 3), num_classes: int = 100, in_channels: int = 3,
                 image_size: int = 32, stem_width: int = 64, block: type[nn.Module] = Bottleneck) -> None:
        super().__init__()
        if not num_blocks or any(int(n) < 1 for n in num_blocks):
            raise ConfigError(f"num_blocks must list >= 1 block per stage, got {list(num_blocks)!r}.")
        units: list[nn.Module] = [ConvBNReLU(in_channels, stem_width, 3)]
        stage_ends = [0]
        in_planes = stem_width
        for s, n in enumerate(num_blocks):
            planes = 64 * 2**s
            for i in range(int(n)):
                units.append(block(in_planes, planes, stride=2 if s > 0 and i == 0 else 1))
                in_planes = planes * getattr(block, "expansion", 1)
            stage_ends.append(len(units) - 1)
        self.units = nn.ModuleList(units)
        self.stage_ends = stage_ends
        self.fc = nn.Linear(in_planes, num_classes)
        self.input_shape = (in_channels, image_size, image_size)
        init_weights(self)

    def reference_modules(self) -> dict[str, str]:
        """Our module paths -> resnetv2.py's (``conv1``/``bn1``, ``layer{s}.{i}``, ``linear``); models/foreign.py."""
        names = {"units.0.conv": "conv1", "units.0.bn": "bn1", "fc": "linear"}
        for unit, theirs in stage_block_names(self, "layer{}.{}").items():
            names[unit] = theirs
            names[f"{unit}.downsample"] = f"{theirs}.shortcut"  # BasicBlock's name for the projection
        return names

    def preact_bns(self) -> list[nn.Module | None]:
        # The last block's last BN (its pre-activation is that BN + shortcut), as RepDistiller's get_bn_before_relu.
        last = "bn3" if isinstance(self.units[1], Bottleneck) else "bn2"
        return [self.units[0].bn] + [getattr(self.units[e], last) for e in self.stage_ends[1:]]


@MODELS.register("ResNet50", description="ResNet-50 (bottleneck, 3x3 CIFAR stem, 4 stages)", paper=PAPER)
def resnet50(num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> ResNetV2:
    """ResNet-50 for small images: bottleneck blocks 3/4/6/3, 3x3 stride-1 stem."""
    return ResNetV2((3, 4, 6, 3), num_classes, in_channels, image_size)


@MODELS.register("ResNet18", description="ResNet-18 (basic blocks, 3x3 CIFAR stem, 4 stages; mdistiller's CIFAR "
                 "student and Tiny-ImageNet teacher)", paper=PAPER)
def resnet18(num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> ResNetV2:
    """ResNet-18 for small images: basic blocks 2/2/2/2 with 64/128/256/512 channels, 3x3 stride-1 stem."""
    return ResNetV2((2, 2, 2, 2), num_classes, in_channels, image_size, block=BasicBlock)
