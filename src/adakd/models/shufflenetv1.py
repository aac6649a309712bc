"""ShuffleNetV1 for small images ("ShuffleV1" of RepDistiller ``models/ShuffleNetv1.py``).

Groups g = 3: a 1x1 conv-BN-ReLU stem (24 channels, stride 1), three stages of 4, 8, 4 units with
240, 480, 960 output channels, global average pooling and Linear(960, num_classes). A unit:

    y = BN(gconv1x1_g(ReLU(BN(dw3x3_s(shuffle_g(ReLU(BN(gconv1x1_g(x)))))))))
    unit(x) = ReLU(y + x)                      (stride 1)
    unit(x) = ReLU(concat[y, avgpool3x3_s2(x)]) (stride 2, first unit of a stage)

with bottleneck width = out/4 and the first 1x1 conv ungrouped when it reads the 24-channel stem.
Every stage ends with a ReLU; its pre-activation output is the sum before it.

Zhang, Zhou, Lin, Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
Mobile Devices", CVPR 2018.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import MODELS
from .contract import ContractModel
from .resnet_cifar import ConvBNReLU, stage_block_names

PAPER = ("Zhang, Zhou, Lin, Sun, ShuffleNet: An Extremely Efficient Convolutional Neural Network for "
         "Mobile Devices, CVPR 2018")


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """[N, C, H, W] -> [N, g, C/g, H, W] -> swap the two channel axes -> [N, C, H, W]."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    """ShuffleNetV1 unit (see the module docstring); pre-activation = the sum / concatenation."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, first_group_dense: bool) -> None:
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        self.groups1 = 1 if first_group_dense else groups
        self.conv1 = nn.Conv2d(in_planes, mid, kernel_size=1, groups=self.groups1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module | None = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None

    def _preact(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = channel_shuffle(out, self.groups1)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            return torch.cat([out, self.shortcut(x)], dim=1)
        return out + x

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self._preact(x)
        return F.relu(pre), pre

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self._preact(x), inplace=True)


class ShuffleNetV1(ContractModel):
    """ShuffleNetV1 with a 1x1 stride-1 stem (CIFAR variant); see the module docstring."""

    family = "shufflenet"

    def __init__(self, num_classes: int = 100, in_channels: int = 3, image_size: int = 32,
                 out_planes: tuple[int, ...] = (240, 480, 960), num_blocks: tuple[int, ...] = (4, 8, 4),
                 groups: int = 3) -> None:
        super().__init__()
        stem = 24
        units: list[nn.Module] = [ConvBNReLU(in_channels, stem, 1)]
        stage_ends = [0]
        c = stem
        for planes, n in zip(out_planes, num_blocks):
            for i in range(n):
                # the first unit concatenates its (pooled) input: its branch makes planes - c channels
                branch = planes - c if i == 0 else planes
                units.append(ShuffleV1Unit(c, branch, 2 if i == 0 else 1, groups, first_group_dense=c == stem))
                c = planes
            stage_ends.append(len(units) - 1)
        self.units = nn.ModuleList(units)
        self.stage_ends = stage_ends
        self.fc = nn.Linear(c, num_classes)
        self.input_shape = (in_channels, image_size, image_size)

    def reference_modules(self) -> dict[str, str]:
        """Our module paths -> RepDistiller's (``conv1``/``bn1``, ``layer{s}.{i}``, ``linear``); models/foreign.py."""
        return {"units.0.conv": "conv1", "units.0.bn": "bn1", "fc": "linear",
                **stage_block_names(self, "layer{}.{}")}

    def preact_bns(self) -> list[nn.Module | None]:
        # The last unit's bn3 (its pre-activation is bn3 + identity), as for the ResNets.
        bns: list[nn.Module | None] = [self.units[0].bn]
        for e in self.stage_ends[1:]:
            unit = self.units[e]
            bns.append(unit.bn3 if unit.shortcut is None else None)  # a concatenation has no single BN
        return bns


@MODELS.register("ShuffleV1", description="ShuffleNetV1 g=3 (CIFAR variant, 240/480/960 channels)", paper=PAPER)
def shufflev1(num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> ShuffleNetV1:
    """ShuffleNetV1, groups 3, stages of 4/8/4 units."""
    return ShuffleNetV1(num_classes, in_channels, image_size)
