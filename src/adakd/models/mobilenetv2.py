"""MobileNetV2 for small images ("mobile_half" of RepDistiller ``models/mobilenetv2.py``).

Width 0.5, expansion 6: a 3x3 stride-2 conv-BN-ReLU stem (16 channels), 17 inverted-residual
units in 7 groups (t, c, n, s) = (1,16,1,1) (6,24,2,1) (6,32,3,2) (6,64,4,2) (6,96,3,1)
(6,160,3,2) (6,320,1,1) with c scaled by the width, then a 1x1 conv-BN-ReLU to 1280 channels,
global average pooling and Linear(1280, num_classes).

    unit(x) = [x +] BN(pw(ReLU(BN(dw3x3_s(ReLU(BN(pw(x)))))))) ,  residual when stride 1 and c_in = c_out

(the expansion 1x1 conv is kept at t = 1, as in the reference code).

Stages: stem | groups 0-1 | group 2 | groups 3-4 | groups 5-6 (the reference's f0..f4). Stage
outputs after the stem are linear (no ReLU): their pre-activation output is the output. The 1x1
conv to 1280 channels is part of the head (``embed``), as in the reference code.

``mobilenetv2_tinyimagenet`` is mdistiller's Tiny-ImageNet student (``models/cifar/mv2_tinyimagenet.py``, the
pytorch-cifar100 MobileNetV2), a different network: width 1.0, biased convs, ReLU6, a 1x1 stem conv with
padding 1 (64x64 -> 66x66), groups (t, c, n, s) = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1)
(6,160,3,1) (6,320,1,1), then a 1x1 conv-BN-ReLU6 to 1280 channels that ends the last stage (its f4), global
average pooling and a 1x1 conv classifier (kept as a conv, so its weights load as they are).
Stages: stem | groups 0-1 | group 2 | group 3 | groups 4-6 + the 1280 conv.

Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import MODELS
from .init import init_weights
from .contract import ContractModel
from .resnet_cifar import ConvBNReLU

PAPER = ("Sandler, Howard, Zhu, Zhmoginov, Chen, MobileNetV2: Inverted Residuals and Linear Bottlenecks, "
         "CVPR 2018")

# (expansion t, channels c, repeats n, first stride s); t = None means "the model's expansion ratio".
SETTINGS: list[tuple[int | None, int, int, int]] = [
    (1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
    (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1),
]
#: the groups whose last unit ends a stage (RepDistiller's f1..f4)
STAGE_GROUPS = (1, 2, 4, 6)


class InvertedResidual(nn.Module):
    """pw-expand -> dw3x3 -> pw-linear, each with BN (ReLU after the first two), residual if shapes match."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_planes * expand_ratio
        self.use_residual = stride == 1 and in_planes == out_planes
        self.conv = nn.Sequential(
            nn.Conv2d(in_planes, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_planes, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_planes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(ContractModel):
    """MobileNetV2 with CIFAR strides (stem stride 2; 32x32 -> 2x2); see the module docstring."""

    family = "mobilenet"

    def __init__(self, num_classes: int = 100, in_channels: int = 3, image_size: int = 32,
                 width_mult: float = 0.5, expand_ratio: int = 6) -> None:
        super().__init__()
        if width_mult <= 0 or expand_ratio < 1:
            raise ConfigError(f"MobileNetV2 needs width_mult > 0 and expand_ratio >= 1, got {width_mult}, "
                              f"{expand_ratio}.")
        c = int(32 * width_mult)
        units: list[nn.Module] = [ConvBNReLU(in_channels, c, 3, stride=2)]
        stage_ends = [0]
        for g, (t, channels, n, s) in enumerate(SETTINGS):
            out = int(channels * width_mult)
            for i in range(n):
                units.append(InvertedResidual(c, out, s if i == 0 else 1, expand_ratio if t is None else t))
                c = out
            if g in STAGE_GROUPS:
                stage_ends.append(len(units) - 1)
        self.units = nn.ModuleList(units)
        self.stage_ends = stage_ends
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = ConvBNReLU(c, self.last_channel, 1)
        self.fc = nn.Linear(self.last_channel, num_classes)
        self.input_shape = (in_channels, image_size, image_size)
        init_weights(self, linear_std=0.01, zero_linear_bias=True)

    def embed(self, h: Tensor) -> Tensor:
        """1x1 conv-BN-ReLU to 1280 channels, then global average pool -> [B, 1280]."""
        return super().embed(self.conv2(h))

    def reference_modules(self) -> dict[str, str]:
        """Our module paths -> RepDistiller's (models/foreign.py): stem ``conv1.0``/``conv1.1``, the i-th unit of
        group g ``blocks.{g}.{i}``, the head conv ``conv2.0``/``conv2.1``, ``fc`` = ``classifier.0``."""
        names = {"units.0.conv": "conv1.0", "units.0.bn": "conv1.1", "conv2.conv": "conv2.0",
                 "conv2.bn": "conv2.1", "fc": "classifier.0"}
        unit = 1
        for g, (_, _, n, _) in enumerate(SETTINGS):
            for i in range(n):
                names[f"units.{unit}"] = f"blocks.{g}.{i}"
                unit += 1
        return names

    def preact_bns(self) -> list[nn.Module | None]:
        # The last unit's output BN (plus the residual where there is one), as RepDistiller.
        return [self.units[0].bn] + [self.units[e].conv[-1] for e in self.stage_ends[1:]]


@MODELS.register("MobileNetV2", description="MobileNetV2 width 0.5 ('mobile_half', CIFAR strides)", paper=PAPER)
def mobilenetv2(num_classes: int = 100, in_channels: int = 3, image_size: int = 32, width_mult: float = 0.5,
                expand_ratio: int = 6) -> MobileNetV2:
    """MobileNetV2, width 0.5, expansion 6 (RepDistiller's mobile_half)."""
    return MobileNetV2(num_classes, in_channels, image_size, width_mult, expand_ratio)


# ----------------------------------------------------------------------------- mdistiller's Tiny-ImageNet variant
#: (t, c, n, s) of mv2_tinyimagenet.py's stage1..stage7
TINY_SETTINGS: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1),
]
TINY_STAGE_GROUPS = (1, 2, 3)  # the last stage ends with the 1280-channel conv


class ConvBNReLU6(nn.Module):
    """conv (with bias) -> BN -> ReLU6; ``forward_preact`` also returns the BN output."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self.bn(self.conv(x))
        return F.relu6(pre), pre

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(self.bn(self.conv(x)))


class LinearBottleneck(nn.Module):
    """pw-expand(bias) -> dw3x3_s(bias) -> pw-linear(bias), BN after each, ReLU6 after the first two;
    residual when stride 1 and c_in = c_out."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_planes * expand_ratio
        self.use_residual = stride == 1 and in_planes == out_planes
        self.residual = nn.Sequential(
            nn.Conv2d(in_planes, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_planes, 1), nn.BatchNorm2d(out_planes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.residual(x)
        return out + x if self.use_residual else out


class ConvClassifier(nn.Module):
    """A 1x1 conv applied to the pooled embedding [B, D] -> [B, C] (the reference's ``conv2`` classifier)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, num_classes
        self.conv = nn.Conv2d(in_features, num_classes, 1)

    def forward(self, pooled: Tensor) -> Tensor:
        return torch.flatten(self.conv(pooled[:, :, None, None]), 1)


class MobileNetV2TinyImageNet(ContractModel):
    """mdistiller's Tiny-ImageNet MobileNetV2 (see the module docstring); built for 64x64 inputs."""

    family = "mobilenet"

    def __init__(self, num_classes: int = 200, in_channels: int = 3, image_size: int = 64) -> None:
        super().__init__()
        units: list[nn.Module] = [ConvBNReLU6(in_channels, 32, 1, padding=1)]
        stage_ends = [0]
        c = 32
        self._groups: list[tuple[int, int]] = []  # (group, index) of every block unit
        for g, (t, channels, n, s) in enumerate(TINY_SETTINGS):
            for i in range(n):
                units.append(LinearBottleneck(c, channels, s if i == 0 else 1, t))
                self._groups.append((g, i))
                c = channels
            if g in TINY_STAGE_GROUPS:
                stage_ends.append(len(units) - 1)
        units.append(ConvBNReLU6(c, 1280, 1))
        stage_ends.append(len(units) - 1)
        self.units = nn.ModuleList(units)
        self.stage_ends = stage_ends
        self.fc = ConvClassifier(1280, num_classes)
        self.input_shape = (in_channels, image_size, image_size)
        # PyTorch's default initialisation, as the reference (it has no init of its own)

    def preact_bns(self) -> list[nn.Module | None]:
        # the stem's and the 1280 conv's BN (before their ReLU6); between them the last unit's output BN
        # (plus the residual where there is one), as MobileNetV2 above
        middle = [self.units[e].residual[-1] for e in self.stage_ends[1:-1]]
        return [self.units[0].bn, *middle, self.units[-1].bn]

    def reference_modules(self) -> dict[str, str]:
        """Our module paths -> mv2_tinyimagenet.py's (models/foreign.py): ``pre.0``/``pre.1``, ``stage{g+1}``
        (a single block) or ``stage{g+1}.{i}``, ``conv1.0``/``conv1.1``, ``fc.conv`` = ``conv2``."""
        names = {"units.0.conv": "pre.0", "units.0.bn": "pre.1", "fc.conv": "conv2"}
        for unit, (g, i) in enumerate(self._groups, start=1):
            single = TINY_SETTINGS[g][2] == 1
            names[f"units.{unit}"] = f"stage{g + 1}" if single else f"stage{g + 1}.{i}"
        last = len(self.units) - 1
        names[f"units.{last}.conv"], names[f"units.{last}.bn"] = "conv1.0", "conv1.1"
        return names


@MODELS.register("mobilenetv2_tinyimagenet", description="MobileNetV2 1.0 with ReLU6 (mdistiller's Tiny-ImageNet "
                 "student, 64x64)", paper=PAPER)
def mobilenetv2_tinyimagenet(num_classes: int = 200, in_channels: int = 3, image_size: int = 64
                             ) -> MobileNetV2TinyImageNet:
    """mdistiller's ``mobilenetv2_tinyimagenet`` (models/cifar/mv2_tinyimagenet.py)."""
    return MobileNetV2TinyImageNet(num_classes, in_channels, image_size)
