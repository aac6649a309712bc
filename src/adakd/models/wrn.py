"""Wide residual networks wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2 (RepDistiller ``models/wrn.py``).

Depth ``6n + 4``, widen factor k: a 3x3 conv stem (16 channels, no BN), three stages of n
pre-activation basic blocks with 16k, 32k, 64k channels at strides 1, 2, 2, a final BN-ReLU,
global average pooling and a linear classifier.

    block(x) = shortcut(x) + conv3x3(ReLU(BN(conv3x3_s(ReLU(BN(x))))))

Where a block changes the width, its BN-ReLU is shared by both paths (shortcut = 1x1 conv of the
activated input); otherwise the shortcut is the identity and the BN-ReLU is on the branch only.

**Where the stages end.** The network is the same function (same layers, same parameter
count); only the unit boundaries are placed so that every stage after the stem ends in a ReLU:
the shared BN-ReLU of the first block of stages 2 and 3, and the final BN-ReLU, run at the end
of the previous stage's last unit (``post_bn``). A stage output is thus ``ReLU(BN(sum))`` and its
pre-activation output is ``BN(sum)`` -- exactly the "preact" features of RepDistiller/mdistiller
(which apply that BN to the raw block sum) and the BN OFD reads its margins from. RepDistiller's
post-activation features are the raw block sums instead. The stem (conv only) has no activation:
its pre-activation output is its output.

Zagoruyko, Komodakis, "Wide Residual Networks", BMVC 2016.
"""
from __future__ import annotations


import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import MODELS
from .init import init_weights
from .contract import ContractModel
from .resnet_cifar import stage_block_names

PAPER = "Zagoruyko, Komodakis, Wide Residual Networks, BMVC 2016"


class WideBlock(nn.Module):
    """Pre-activation basic block of a WRN.

    ``pre``: ``"branch"`` -- BN-ReLU on the residual branch only, identity shortcut (same width);
    ``"shared"`` -- one BN-ReLU feeds both the branch and the 1x1 conv shortcut (width change);
    ``"none"`` -- the input is already activated by the previous unit, 1x1 conv shortcut.
    ``post``: end with ``ReLU(post_bn(sum))`` (the next stage's shared BN-ReLU or the final one).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, pre: str, post: bool) -> None:
        super().__init__()
        if pre not in ("branch", "shared", "none"):
            raise ValueError(f"unknown pre-activation mode {pre!r}")
        if (pre == "branch") != (in_planes == out_planes and stride == 1):
            raise ValueError("an identity shortcut needs the same width and stride 1")
        self.pre = pre
        self.bn1: nn.Module | None = nn.BatchNorm2d(in_planes) if pre != "none" else None
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = (
            None if pre == "branch"
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )
        self.post_bn: nn.Module | None = nn.BatchNorm2d(out_planes) if post else None

    def _sum(self, x: Tensor) -> Tensor:
        if self.pre == "branch":
            out = F.relu(self.bn1(x), inplace=True)
            shortcut = x
        else:
            if self.pre == "shared":
                x = F.relu(self.bn1(x), inplace=True)
            out = x
            shortcut = self.shortcut(x)
        out = F.relu(self.bn2(self.conv1(out)), inplace=True)
        return shortcut + self.conv2(out)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.post_bn is None:
            out = self._sum(x)
            return out, out
        pre = self.post_bn(self._sum(x))
        return F.relu(pre), pre

    def forward(self, x: Tensor) -> Tensor:
        out = self._sum(x)
        return out if self.post_bn is None else F.relu(self.post_bn(out), inplace=True)


class WideResNet(ContractModel):
    """WRN-depth-k for small images (RepDistiller ``models/wrn.py``, dropout 0); see the module docstring."""

    family = "wrn"

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3,
                 image_size: int = 32) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ConfigError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}.")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        units: list[nn.Module] = [nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)]
        stage_ends = [0]
        in_planes = 16
        for s, planes in enumerate(widths):
            for i in range(n):
                stride = 2 if s > 0 and i == 0 else 1
                if i == 0 and s > 0:
                    pre = "none"  # activated by the previous stage's post_bn
                elif in_planes == planes:
                    pre = "branch"
                else:
                    pre = "shared"
                units.append(WideBlock(in_planes, planes, stride, pre, post=i == n - 1))
                in_planes = planes
            stage_ends.append(len(units) - 1)
        self.units = nn.ModuleList(units)
        self.stage_ends = stage_ends
        self.fc = nn.Linear(in_planes, num_classes)
        self.input_shape = (in_channels, image_size, image_size)
        init_weights(self, zero_linear_bias=True)

    def reference_modules(self) -> dict[str, str]:
        """Our module paths -> RepDistiller's (models/foreign.py). Blocks are ``block{s}.layer.{i}``
        (``shortcut`` is ``convShortcut``); a stage's ``post_bn`` is the next stage's first ``bn1``, the
        last one the final ``bn1``."""
        names = {"units.0": "conv1", "fc": "fc"}
        for unit, theirs in stage_block_names(self, "block{}.layer.{}").items():
            names[unit] = theirs
            names[f"{unit}.shortcut"] = f"{theirs}.convShortcut"
        ends = self.stage_ends[1:]
        for stage, end in enumerate(ends, start=1):
            names[f"units.{end}.post_bn"] = f"block{stage + 1}.layer.0.bn1" if stage < len(ends) else "bn1"
        return names

    def preact_bns(self) -> list[nn.Module | None]:
        return [None] + [self.units[e].post_bn for e in self.stage_ends[1:]]


@MODELS.register("wrn_16_1", description="Wide ResNet 16-1 (CIFAR)", paper=PAPER)
def wrn_16_1(num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> WideResNet:
    """WRN-16-1."""
    return WideResNet(16, 1, num_classes, in_channels, image_size)


@MODELS.register("wrn_16_2", description="Wide ResNet 16-2 (CIFAR)", paper=PAPER)
def wrn_16_2(num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> WideResNet:
    """WRN-16-2."""
    return WideResNet(16, 2, num_classes, in_channels, image_size)


@MODELS.register("wrn_40_1", description="Wide ResNet 40-1 (CIFAR)", paper=PAPER)
def wrn_40_1(num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> WideResNet:
    """WRN-40-1."""
    return WideResNet(40, 1, num_classes, in_channels, image_size)


@MODELS.register("wrn_40_2", description="Wide ResNet 40-2 (CIFAR)", paper=PAPER)
def wrn_40_2(num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> WideResNet:
    """WRN-40-2."""
    return WideResNet(40, 2, num_classes, in_channels, image_size)
