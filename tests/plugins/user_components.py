"""A user's plugin, as a user would write it: a model and a loss registered from outside adakd.

Loaded by tests/test_plugins.py through a config's ``imports:`` (this file's path)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adakd.losses.base import Distiller, register_distiller
from adakd.models.contract import ContractModel
from adakd.registry import MODELS


class TinyConvNet(ContractModel):
    """stem conv -> two conv stages (stride 2) -> global pool -> fc; the feature contract from units."""

    family = "user_tiny"

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: int = 8) -> None:
        super().__init__()
        self.input_shape = (in_channels, image_size, image_size)

        def unit(c_in: int, c_out: int, stride: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        self.units = nn.ModuleList([unit(in_channels, width, 1), unit(width, 2 * width, 2), unit(2 * width, 4 * width, 2)])
        self.stage_ends = [0, 1, 2]
        self.fc = nn.Linear(4 * width, num_classes)


@MODELS.register("user_tiny_convnet", description="A user's tiny conv net (plugin test)")
def user_tiny_convnet(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: int = 8) -> TinyConvNet:
    return TinyConvNet(num_classes, in_channels, image_size, width)


@register_distiller
class PooledL2(Distiller):
    """mean squared distance between the pooled embeddings (a user's loss; needs equal widths)."""

    name = "user_pooled_l2"
    description = "L2 between pooled embeddings (plugin test)"
    spot_kind = "pooled"
    default_weight = 1.0

    def __init__(self, student, teacher, weight: float | None = None, scale: float = 1.0) -> None:
        super().__init__(student, teacher, weight)
        self.scale = float(scale)
        self.proj = nn.Linear(student.pooled, teacher.pooled, bias=False)

    def spot_loss(self, i, s, t, ctx) -> torch.Tensor:
        return self.weight * self.scale * F.mse_loss(self.proj(s.float()), t.float().detach())
