"""Connecting student feature maps to teacher feature maps.

Shared by the feature distillers (FitNet, AT, NST, FT, AB, FSP, KDSVD, OFD, ReviewKD):

* :func:`paired_stage_maps` checks that two models can be compared stage by stage
  (same number of stages, convolutional ``(C, H, W)`` maps) and pairs their shapes;
* :func:`resize_to` / :func:`pool_to_common` bring two maps to one spatial size
  (adaptive average pooling down, nearest-neighbour up; :func:`pool_to_common_precise` pools in float32);
* :class:`ConvBNRegressor` maps a student map ``(C_s, H_s, W_s)`` onto a teacher map
  ``(C_t, H_t, W_t)`` of any spatial size ratio (conv + BN, optional ReLU).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ShapeError
from ..models.contract import FeatureShapes
from ..runtime.device import at_least_float32

MapShape = tuple[int, int, int]


def map_shape(shape: Sequence[int], where: str, method: str) -> MapShape:
    """``shape`` as a ``(C, H, W)`` tuple, or a ShapeError saying that ``method`` needs conv maps."""
    if len(shape) != 3:
        raise ShapeError(
            f"{method} needs convolutional feature maps (C, H, W), but {where} has shape {tuple(shape)}. "
            f"Use a method on logits or embeddings (kd, dkd, crd, rkd, pkt) for this pair."
        )
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def paired_stage_maps(student: FeatureShapes, teacher: FeatureShapes, method: str,
                      include_stem: bool = False) -> list[tuple[MapShape, MapShape]]:
    """(student, teacher) map shapes stage by stage (stem first when ``include_stem``).

    Stage-wise methods pair stage k of the student with stage k of the teacher, so both
    models must have the same number of stages.
    """
    if student.num_stages != teacher.num_stages:
        raise ShapeError(
            f"{method} pairs the stages one to one, but the student has {student.num_stages} stages and "
            f"the teacher {teacher.num_stages}. Use a pair with the same number of stages, or a method "
            f"that reads one stage or the logits (fitnet, ft, kd, dkd)."
        )
    start = 0 if include_stem else 1
    return [
        (map_shape(s, f"student stage {k}", method), map_shape(t, f"teacher stage {k}", method))
        for k, (s, t) in enumerate(zip(student.stages[start:], teacher.stages[start:]), start)
    ]




def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``x`` [B, C, H, W] at spatial ``size``: adaptive average pooling when shrinking, nearest when growing."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="nearest")


def pool_to_common(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Both maps adaptive-average-pooled to the smaller spatial size (per dimension)."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return resize_to(a, size), resize_to(b, size)


def pool_to_common_precise(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`pool_to_common` with the pooling in at least float32. Maps of one size already come back
    as they are, in their own dtype and layout (no copy): the loss's float32 arithmetic promotes a
    bf16 map inside its first kernel, which gives the same values as converting it first."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    return pool_to_common(at_least_float32(a), at_least_float32(b))


class ConvBNRegressor(nn.Module):
    """Regress a student map onto a teacher map: ``BN(conv(resize(x)))`` (+ ReLU).

    * same spatial size: 1x1 conv;
    * the teacher is half the student, rounded up (32->16, 8->4, 7->4): 3x3 conv, stride 2, padding 1;
    * any other ratio (7->4 is covered above; 7->3, 4->7, 8->16): resize to the teacher's size
      (:func:`resize_to`), then a 1x1 conv.

    The conv has no bias (the BN that follows has one). This is the CRD repository's ``ConvReg``
    (FitNet's regressor, AB's connector) generalised to any size ratio.
    """

    def __init__(self, student_shape: MapShape, teacher_shape: MapShape, relu: bool = False) -> None:
        super().__init__()
        cs, hs, ws = student_shape
        ct, ht, wt = teacher_shape
        self.out_size = (ht, wt)
        self.relu = relu
        self.resize = False
        if (hs, ws) == (ht, wt):
            self.conv = nn.Conv2d(cs, ct, kernel_size=1, bias=False)
        elif (hs + 1) // 2 == ht and (ws + 1) // 2 == wt:
            self.conv = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1, bias=False)
        else:
            self.resize = True
            self.conv = nn.Conv2d(cs, ct, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(ct)

    def forward(self, x: Tensor) -> Tensor:
        if self.resize:
            x = resize_to(x, self.out_size)
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x
