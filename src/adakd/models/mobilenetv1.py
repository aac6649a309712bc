"""MobileNetV1, ImageNet layout, width 1.0 (the R50 -> MobileNetV1 ImageNet student of the KD papers).

A 3x3 stride-2 conv-BN-ReLU stem (32 channels), 13 depthwise-separable units

    unit(x) = ReLU(BN(pw1x1(ReLU(BN(dw3x3_s(x))))))

with output channels 64, 128, 128, 256, 256, 512 x 6, 1024, 1024 (stride 2 at the 2nd, 4th,
6th and 12th unit), global average pooling and Linear(1024, num_classes). Stages end after units
3, 5, 11 and 13 (mdistiller's feature points; 224x224 -> 56, 28, 14, 7). Every stage ends with a
ReLU; its pre-activation output is the last pointwise BN's output.

Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto, Adam, "MobileNets: Efficient
Convolutional Neural Networks for Mobile Vision Applications", arXiv 2017.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import MODELS
from .contract import ContractModel
from .init import init_weights
from .resnet_cifar import ConvBNReLU

PAPER = ("Howard et al., MobileNets: Efficient Convolutional Neural Networks for Mobile Vision "
         "Applications, arXiv 2017")

#: (output channels, stride) of the 13 depthwise-separable units
LAYOUT: list[tuple[int, int]] = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]
STAGE_ENDS = [0, 3, 5, 11, 13]


class DepthwiseSeparable(nn.Module):
    """dw3x3(stride)-BN-ReLU then pw1x1-BN-ReLU; pre-activation = the pointwise BN output."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.pw = nn.Conv2d(in_planes, out_planes, 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)

    def _preact(self, x: Tensor) -> Tensor:
        return self.bn2(self.pw(F.relu(self.bn1(self.dw(x)), inplace=True)))

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self._preact(x)
        return F.relu(pre), pre

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self._preact(x), inplace=True)


class MobileNetV1(ContractModel):
    """MobileNetV1 (ImageNet layout: stride-2 stem, 32x downsampling); see the module docstring."""

    family = "mobilenet"

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                 width_mult: float = 1.0) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ConfigError(f"MobileNetV1 needs width_mult > 0, got {width_mult}.")
        c = int(32 * width_mult)
        units: list[nn.Module] = [ConvBNReLU(in_channels, c, 3, stride=2)]
        for channels, stride in LAYOUT:
            out = int(channels * width_mult)
            units.append(DepthwiseSeparable(c, out, stride))
            c = out
        self.units = nn.ModuleList(units)
        self.stage_ends = list(STAGE_ENDS)
        self.fc = nn.Linear(c, num_classes)
        self.input_shape = (in_channels, image_size, image_size)
        init_weights(self)

    def reference_modules(self) -> dict[str, str]:
        """Our module paths -> mdistiller's ImageNet MobileNetV1 (``models/imagenet/mobilenetv1.py``, one
        Sequential ``model``: unit i is ``model.{i}``, its dw/BN/pw/BN at 0/1/3/4); models/foreign.py."""
        names = {"units.0.conv": "model.0.0", "units.0.bn": "model.0.1", "fc": "fc"}
        for i in range(1, len(self.units)):
            for ours, index in (("dw", 0), ("bn1", 1), ("pw", 3), ("bn2", 4)):
                names[f"units.{i}.{ours}"] = f"model.{i}.{index}"
        return names

    def preact_bns(self) -> list[nn.Module | None]:
        return [self.units[0].bn] + [self.units[e].bn2 for e in self.stage_ends[1:]]


@MODELS.register("MobileNetV1", description="MobileNetV1 width 1.0 (ImageNet layout)", paper=PAPER)
def mobilenetv1(num_classes: int = 100, in_channels: int = 3, image_size: int = 32,
                width_mult: float = 1.0) -> MobileNetV1:
    """MobileNetV1, width 1.0 (ImageNet layout; at 32x32 the last stage is 1x1)."""
    return MobileNetV1(num_classes, in_channels, image_size, width_mult)
