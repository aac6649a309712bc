"""Factor transfer (Kim, Park, Kwak, NeurIPS 2018)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.contract import Features, FeatureShapes
from .base import DistillContext, Distiller, register_distiller
from .connectors import map_shape, pool_to_common
from ..runtime.device import at_least_float32


def _conv_stack(channels: list[int], batch_norm: bool, transpose: bool = False) -> nn.Sequential:
    """3x3 (transposed) convs, stride 1, padding 1, each followed by [BN] + LeakyReLU(0.1): sizes kept
    (no conv bias before a BN, as in the FT authors' code)."""
    layers: list[nn.Module] = []
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers.append(conv(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Convolutional auto-encoder on the teacher's map: C -> C -> kC -> kC (encoder, the "factor") and back.

    Trained alone, by reconstruction, in the pre-training stage; frozen afterwards (its BatchNorms then
    use their running statistics). ``batch_norm`` is the FT authors' default; without it (the CRD
    code's port) the reconstruction is an unnormalised 6-conv regression of a non-centred post-ReLU map,
    which SGD at lr 0.05 trains at the edge of stability (see :class:`FT`).
    """

    def __init__(self, channels: int, factor_channels: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.encoder = _conv_stack([channels, channels, factor_channels, factor_channels], batch_norm=batch_norm)
        self.decoder = _conv_stack([factor_channels, factor_channels, channels, channels], batch_norm=batch_norm,
                                   transpose=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Student-side encoder C_s -> C_s -> kC_t -> kC_t (3x3 convs, BN, LeakyReLU 0.1)."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        self.encoder = _conv_stack([channels, channels, factor_channels, factor_channels], batch_norm=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


def factor_vector(f: Tensor, p1: float) -> Tensor:
    """normalize_L2( vec( mean_c f_c^p1 ) ) -> [B, H*W]."""
    return F.normalize(f.abs().pow(p1).mean(dim=1).flatten(1), dim=1)


@register_distiller
class FT(Distiller):
    """Factor transfer on the last stage: a paraphraser P (teacher) and a translator T (student).

    Pre-training (``pretrain_epochs``, default 30 as in the CRD code): P is trained alone to
    reconstruct the teacher's last-stage map, ``L_pre = mean (dec(enc(F_t)) - F_t)^2``.
    Distillation, with P frozen:

        L = weight * mean_{n, hw} | phi(T(F_s)) - phi(enc(F_t)) |^p2,   phi(x) = normalize(vec(mean_c x^p1))

    (p1 = 2, p2 = 1, factor rate k = 0.5: the factor has int(k * C_t) channels; maps of different
    spatial sizes are average-pooled to the smaller). phi is the CRD code's reduction of the factor
    (channel mean of x^p1, like AT); the paper L2-normalises the whole flattened factor instead.
    Default weight 200 (CRD repository).

    Kim, Park, Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer", NeurIPS 2018.
    """

    name = "ft"
    description = "Factor transfer: L1 between normalised paraphraser (teacher) and translator (student) factors"
    paper = "Kim et al., Paraphrasing Complex Network: Network Compression via Factor Transfer, NeurIPS 2018"
    default_weight = 200.0
    spot_kind = "last"
    pretrain_epochs = 30

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 rate: float = 0.5, p1: float = 2.0, p2: float = 1.0, pretrain_epochs: int | None = None,
                 paraphraser_bn: bool = True) -> None:
        super().__init__(student, teacher, weight)
        if not 0 < rate <= 4 or p1 <= 0 or p2 <= 0:
            raise ConfigError(f"ft needs 0 < rate <= 4, p1 > 0 and p2 > 0 (got rate={rate}, p1={p1}, p2={p2}); "
                              f"the paper uses rate 0.5, p1 2, p2 1.")
        if pretrain_epochs is not None:
            if int(pretrain_epochs) < 0:
                raise ConfigError(f"ft pretrain_epochs={pretrain_epochs} must be >= 0.")
            self.pretrain_epochs = int(pretrain_epochs)
        s_c = map_shape(student.stages[-1], "the student's last stage", "ft")[0]
        t_c = map_shape(teacher.stages[-1], "the teacher's last stage", "ft")[0]
        factor_c = max(1, int(t_c * rate))
        self.p1, self.p2 = float(p1), float(p2)
        self.paraphraser = Paraphraser(t_c, factor_c, batch_norm=bool(paraphraser_bn))
        self.translator = Translator(s_c, factor_c)

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        with torch.no_grad():  # the paraphraser is frozen after pre-training: running BN statistics
            mode = self.paraphraser.training
            factor_t = self.paraphraser.eval().encoder(t.detach())
            self.paraphraser.train(mode)
        factor_s, factor_t = pool_to_common(at_least_float32(self.translator(s)), at_least_float32(factor_t))
        diff = (factor_vector(factor_s, self.p1) - factor_vector(factor_t, self.p1)).abs()
        return self.weight * (diff if self.p2 == 1 else diff.pow(self.p2)).mean()

    def pretrain_loss(self, s: Features, t: Features, ctx: DistillContext) -> Tensor:
        target = at_least_float32(t.stages[-1].detach())
        _, reconstruction = self.paraphraser(target)
        return F.mse_loss(at_least_float32(reconstruction), target)

    def pretrain_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self.paraphraser]
