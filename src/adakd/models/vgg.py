"""VGG with BatchNorm for small images: vgg8, vgg11, vgg13, vgg16, vgg19 (RepDistiller ``models/vgg.py``).

Five groups of 3x3 conv(bias)-BN-ReLU layers, e.g. vgg13 = [[64, 64], [128, 128], [256, 256],
[512, 512], [512, 512]] and vgg8 = [[64], [128], [256], [512], [512]]; a 2x2 max-pool between
groups 0-1, 1-2 and 2-3, and between groups 3-4 only for inputs of 64 pixels or more (as the
reference code, which pools there only at 64x64); then global average pooling and
Linear(512, num_classes) (no FC stack).

**Units.** ``units[0]`` (the stem) is group 0 (one or two conv-BN-ReLU layers); every later
conv-BN-ReLU is one unit. A max-pool belongs to the *first* unit of the group it feeds (pool,
then conv-BN-ReLU), so a stage output is the last conv-BN-ReLU of its group before pooling --
the same tap points as the reference code's features f0..f4. Every stage ends with a ReLU; its
pre-activation output is the last BN's output.

Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..errors import ShapeError
from ..registry import MODELS
from .init import init_weights
from .contract import ContractModel
from .resnet_cifar import ConvBNReLU

PAPER = "Simonyan, Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015"

CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class ConvGroup(nn.Sequential):
    """A chain of :class:`ConvBNReLU` layers; its pre-activation output is the last layer's BN output."""

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        layers = list(self)
        for layer in layers[:-1]:
            x = layer(x)
        return layers[-1].forward_preact(x)


class VGG(ContractModel):
    """VGG-BN with a global-average-pool head; see the module docstring for units and pooling."""

    family = "vgg"

    def __init__(self, groups: Sequence[Sequence[int]], num_classes: int = 100, in_channels: int = 3,
                 image_size: int = 32) -> None:
        super().__init__()
        pool_last = image_size >= 64
        num_pools = 4 if pool_last else 3
        if image_size < 2**num_pools:
            raise ShapeError(f"VGG pools {num_pools} times: inputs must be at least {2 ** num_pools} pixels, "
                             f"got image_size={image_size}. Resize the images or choose a ResNet.")
        stem_layers = []
        c = in_channels
        for width in groups[0]:
            stem_layers.append(ConvBNReLU(c, width, 3, bias=True))
            c = width
        units: list[nn.Module] = [ConvGroup(*stem_layers)]
        stage_ends = [0]
        for g, group in enumerate(groups[1:], start=1):
            for j, width in enumerate(group):
                pool = j == 0 and (g < 4 or pool_last)
                units.append(ConvBNReLU(c, width, 3, bias=True, pool_first=pool))
                c = width
            stage_ends.append(len(units) - 1)
        self.units = nn.ModuleList(units)
        self.stage_ends = stage_ends
        self.fc = nn.Linear(c, num_classes)
        self.input_shape = (in_channels, image_size, image_size)
        init_weights(self, linear_std=0.01, zero_linear_bias=True)

    def reference_modules(self) -> dict[str, str]:
        """Our module paths -> RepDistiller's (models/foreign.py): group g is ``block{g}``, a Sequential of
        conv, BN, ReLU per layer, so its j-th conv/BN are ``block{g}.{3j}``/``{3j+1}``; ``fc`` is ``classifier``."""
        names = {"fc": "classifier"}
        layers = [f"units.0.{j}" for j in range(len(self.units[0]))]
        for j, ours in enumerate(layers):
            names[f"{ours}.conv"], names[f"{ours}.bn"] = f"block0.{3 * j}", f"block0.{3 * j + 1}"
        for g in range(1, len(self.stage_ends)):
            start, end = self.stage_unit_range(g)
            for j, unit in enumerate(range(start, end)):
                names[f"units.{unit}.conv"], names[f"units.{unit}.bn"] = f"block{g}.{3 * j}", f"block{g}.{3 * j + 1}"
        return names

    def preact_bns(self) -> list[nn.Module | None]:
        return [self.units[0][-1].bn] + [self.units[e].bn for e in self.stage_ends[1:]]


@MODELS.register("vgg8", description="VGG-8 with BN (one conv per group)", paper=PAPER)
def vgg8(num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> VGG:
    """VGG-8-BN: [[64], [128], [256], [512], [512]]."""
    return VGG(CONFIGS["vgg8"], num_classes, in_channels, image_size)


@MODELS.register("vgg11", description="VGG-11 with BN", paper=PAPER)
def vgg11(num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> VGG:
    """VGG-11-BN (configuration A)."""
    return VGG(CONFIGS["vgg11"], num_classes, in_channels, image_size)


@MODELS.register("vgg13", description="VGG-13 with BN", paper=PAPER)
def vgg13(num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> VGG:
    """VGG-13-BN (configuration B)."""
    return VGG(CONFIGS["vgg13"], num_classes, in_channels, image_size)


@MODELS.register("vgg16", description="VGG-16 with BN", paper=PAPER)
def vgg16(num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> VGG:
    """VGG-16-BN (configuration D)."""
    return VGG(CONFIGS["vgg16"], num_classes, in_channels, image_size)


@MODELS.register("vgg19", description="VGG-19 with BN", paper=PAPER)
def vgg19(num_classes: int = 100, in_channels: int = 3, image_size: int = 32) -> VGG:
    """VGG-19-BN (configuration E)."""
    return VGG(CONFIGS["vgg19"], num_classes, in_channels, image_size)
