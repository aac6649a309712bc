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

Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
"""
from __future__ import annotations


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

    def preact_bns(self) -> list[nn.Module | None]:
        # The last unit's output BN (plus the residual where there is one), as RepDistiller.
        return [self.units[0].bn] + [self.units[e].conv[-1] for e in self.stage_ends[1:]]


@MODELS.register("MobileNetV2", description="MobileNetV2 width 0.5 ('mobile_half', CIFAR strides)", paper=PAPER)
def mobilenetv2(num_classes: int = 100, in_channels: int = 3, image_size: int = 32, width_mult: float = 0.5,
                expand_ratio: int = 6) -> MobileNetV2:
    """MobileNetV2, width 0.5, expansion 6 (RepDistiller's mobile_half)."""
    return MobileNetV2(num_classes, in_channels, image_size, width_mult, expand_ratio)
