"""ShuffleNetV2 1.0x for small images ("ShuffleV2" of RepDistiller ``models/ShuffleNetv2.py``).

A 1x1 conv-BN-ReLU stem (24 channels, stride 1); three stages with 116, 232, 464 channels,
each a stride-2 down-sampling unit followed by 3, 7, 3 basic units; then a 1x1 conv-BN-ReLU to
1024 channels (part of the head, ``embed``), global average pooling and Linear(1024, num_classes).

    basic(x)  = shuffle_2(concat[x1, ReLU(BN(pw(BN(dw3x3(ReLU(BN(pw(x2))))))))]),  [x1, x2] = split(x)
    down(x)   = shuffle_2(concat[ReLU(BN(pw(BN(dw3x3_s2(x))))),
                                 ReLU(BN(pw(BN(dw3x3_s2(ReLU(BN(pw(x))))))))])

Every stage ends with a basic unit; its pre-activation output is the same concatenation and
shuffle with the last BN output in place of its ReLU, so ``stage = ReLU(preact)`` channel by
channel (the reference code returns the unshuffled concatenation as "preact", whose channel
order differs from the stage output).

Ma, Zhang, Zheng, Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", ECCV 2018.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import MODELS
from .contract import ContractModel
from .resnet_cifar import ConvBNReLU, stage_block_names
from .shufflenetv1 import channel_shuffle

PAPER = "Ma, Zhang, Zheng, Sun, ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design, ECCV 2018"

#: net size -> (stage channels + head channels, basic units per stage), as the reference code
CONFIGS: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


class ShuffleV2Basic(nn.Module):
    """Stride-1 unit: half the channels pass through, the other half go through pw-dw-pw."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2
        half = channels - self.split
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, stride=1, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def _branch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, : self.split], x[:, self.split:]
        out = F.relu(self.bn1(self.conv1(x2)), inplace=True)
        out = self.bn2(self.conv2(out))
        return x1, self.bn3(self.conv3(out))

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, pre = self._branch(x)
        out = channel_shuffle(torch.cat([x1, F.relu(pre)], dim=1), 2)
        return out, channel_shuffle(torch.cat([x1, pre], dim=1), 2)

    def forward(self, x: Tensor) -> Tensor:
        x1, pre = self._branch(x)
        return channel_shuffle(torch.cat([x1, F.relu(pre, inplace=True)], dim=1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: both halves see the whole input; output channels = out_channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        # left: dw3x3 s2 -> pw
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right: pw -> dw3x3 s2 -> pw
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))), inplace=True)
        right = F.relu(self.bn3(self.conv3(x)), inplace=True)
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))), inplace=True)
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class ShuffleNetV2(ContractModel):
    """ShuffleNetV2 with a 1x1 stride-1 stem (CIFAR variant); see the module docstring."""

    family = "shufflenet"

    def __init__(self, num_classes: int = 100, in_channels: int = 3, image_size: int = 32,
                 net_size: float = 1.0) -> None:
        super().__init__()
        if float(net_size) not in CONFIGS:
            raise ConfigError(f"ShuffleV2 net_size must be one of {sorted(CONFIGS)}, got {net_size!r}.")
        channels, num_blocks = CONFIGS[float(net_size)]
        c = 24
        units: list[nn.Module] = [ConvBNReLU(in_channels, c, 1)]
        stage_ends = [0]
        for planes, n in zip(channels[:3], num_blocks):
            units.append(ShuffleV2Down(c, planes))
            units.extend(ShuffleV2Basic(planes) for _ in range(n))
            c = planes
            stage_ends.append(len(units) - 1)
        self.units = nn.ModuleList(units)
        self.stage_ends = stage_ends
        self.conv2 = ConvBNReLU(c, channels[3], 1)
        self.fc = nn.Linear(channels[3], num_classes)
        self.input_shape = (in_channels, image_size, image_size)

    def embed(self, h: Tensor) -> Tensor:
        """1x1 conv-BN-ReLU to 1024 channels, then global average pool -> [B, 1024]."""
        return super().embed(self.conv2(h))

    def reference_modules(self) -> dict[str, str]:
        """Our module paths -> RepDistiller's (``conv1``/``bn1``, ``layer{s}.{i}``, ``linear``); models/foreign.py."""
        return {"units.0.conv": "conv1", "units.0.bn": "bn1", "fc": "linear", "conv2.conv": "conv2", "conv2.bn": "bn2",
                **stage_block_names(self, "layer{}.{}")}

    def preact_bns(self) -> list[nn.Module | None]:
        # Stage pre-activations interleave pass-through channels with a BN's: no single BN produces them.
        return [self.units[0].bn] + [None] * (len(self.stage_ends) - 1)


@MODELS.register("ShuffleV2", description="ShuffleNetV2 1.0x (CIFAR variant, 116/232/464 channels)", paper=PAPER)
def shufflev2(num_classes: int = 100, in_channels: int = 3, image_size: int = 32,
              net_size: float = 1.0) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x, stages of 1 + 3/7/3 units."""
    return ShuffleNetV2(num_classes, in_channels, image_size, net_size)
