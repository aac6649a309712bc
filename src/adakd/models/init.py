"""Weight initialisation shared by the zoo (the RepDistiller / CRD models' schemes).

Every conv is Kaiming-normal for ReLU with fan-out (std = sqrt(2 / (k_h k_w C_out)), He et al.
2015) and a zero bias; every BatchNorm/GroupNorm has weight 1 and bias 0. The families differ
only in the classifier: VGG and MobileNetV2 draw it from N(0, 0.01) with a zero bias, WRN zeroes
its bias only, ResNets keep PyTorch's default.
"""
from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module, linear_std: float | None = None, zero_linear_bias: bool = False) -> None:
    """Initialise ``model`` in place (module order, so a seed gives the same weights as before)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            if zero_linear_bias and m.bias is not None:
                nn.init.zeros_(m.bias)
