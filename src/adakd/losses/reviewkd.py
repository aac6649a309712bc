"""Knowledge review (Chen, Liu, Zhao, Jia, CVPR 2021)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.contract import Features, FeatureShapes
from .base import DistillContext, Distiller, register_distiller, warmup_done, warmup_scale
from .connectors import paired_stage_maps
from .dkd import check_warmup_advance
from ..runtime.device import at_least_float32

#: Pyramid levels of the hierarchical context loss (output sizes of the adaptive pools).
HCL_LEVELS = (4, 2, 1)


def hierarchical_context_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """HCL: per level, MSE at full size plus MSE after pooling to 4x4, 2x2, 1x1 (those smaller
    than the map), weighted 1, 1/2, 1/4, 1/8 and normalised by the weights used; summed over levels."""
    total = []
    for fs, ft in zip(student, teacher):
        loss = F.mse_loss(fs, ft)
        weight, norm = 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= fs.shape[2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            norm += weight
        total.append(loss / norm)
    return torch.stack(total).sum()


class AttentionBasedFusion(nn.Module):
    """ABF: 1x1 conv-BN on the student map; fused with the (upsampled) residual from the deeper
    level by two sigmoid attention maps; resized to the teacher's size; 3x3 conv-BN to the
    teacher's channels. Returns (output, residual for the next, shallower level)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None and residual is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


@register_distiller
class ReviewKD(Distiller):
    """Knowledge review: each student level, fused with all deeper ones, regresses the teacher's level.

    Levels (shallow to deep): the stage outputs after the stem and the pooled embedding (as a 1x1
    map). Student: post-activation stage outputs; teacher: pre-activation ones (mdistiller). From
    the deepest level up, an ABF module fuses the student map with the residual from the level
    below and maps it to the teacher's channels and size; the outputs O_k are compared by the
    hierarchical context loss:

        L = weight * min(done / warmup_epochs, 1) * sum_k HCL(O_k, T_k)

    Default weight 5.0 with a linear warm-up over 20 epochs, advanced every step (``ctx.progress``) or, with
    ``warmup_advance="epoch"``, once per epoch as mdistiller (1/20 in the first epoch); ABF width
    min(512, student embedding dim).

    Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021.
    """

    name = "reviewkd"
    description = "ReviewKD: attention-based fusion of student stages, hierarchical context loss to the teacher"
    paper = "Chen et al., Distilling Knowledge via Knowledge Review, CVPR 2021"
    default_weight = 5.0
    spot_kind = "stages"

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 warmup_epochs: float = 20.0, max_mid_channels: int = 512,
                 warmup_advance: Literal["step", "epoch"] = "step") -> None:
        super().__init__(student, teacher, weight)
        self.warmup_advance = check_warmup_advance(self.name, warmup_advance)
        if warmup_epochs < 0 or int(max_mid_channels) < 1:
            raise ConfigError(f"reviewkd needs warmup_epochs >= 0 and max_mid_channels >= 1 "
                              f"(got {warmup_epochs}, {max_mid_channels}); defaults are 20 and 512.")
        self.warmup_epochs = float(warmup_epochs)
        pairs = paired_stage_maps(student, teacher, "reviewkd")
        in_channels = [s[0] for s, _ in pairs] + [student.pooled]
        out_channels = [t[0] for _, t in pairs] + [teacher.pooled]
        self.out_sizes = [(t[1], t[2]) for _, t in pairs] + [(1, 1)]
        mid = min(int(max_mid_channels), student.pooled)
        last = len(in_channels) - 1
        self.abfs = nn.ModuleList(
            AttentionBasedFusion(c_in, mid, c_out, fuse=k < last)
            for k, (c_in, c_out) in enumerate(zip(in_channels, out_channels))
        )

    def review(self, levels: list[Tensor]) -> list[Tensor]:
        """ABF outputs, shallow to deep, computed from the deepest level up."""
        outputs: list[Tensor] = [levels[0]] * len(levels)
        residual = None
        for k in reversed(range(len(levels))):
            outputs[k], residual = self.abfs[k](levels[k], residual, self.out_sizes[k])
        return outputs

    def warmup_factor(self, ctx: DistillContext) -> float:
        return warmup_scale(warmup_done(ctx, self.warmup_advance), self.warmup_epochs)

    def forward(self, s: Features, t: Features, ctx: DistillContext) -> dict[str, Tensor]:
        student_levels = list(s.stages[1:]) + [s.pooled[:, :, None, None]]
        teacher_levels = [at_least_float32(f.detach()) for f in list(t.preact_stages[1:]) + [t.pooled[:, :, None, None]]]
        outputs = [at_least_float32(o) for o in self.review(student_levels)]
        loss = hierarchical_context_loss(outputs, teacher_levels)
        return {self.name: self.weight * self.warmup_factor(ctx) * loss}
