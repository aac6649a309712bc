"""FitNet hints (Romero et al., ICLR 2015)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..models.contract import Features, FeatureShapes
from .base import DistillContext, Distiller, register_distiller
from .connectors import ConvBNRegressor, map_shape
from ..runtime.device import at_least_float32


@register_distiller
class FitNet(Distiller):
    """FitNet hint loss: a regressor maps the student's guided layer onto the teacher's hint layer.

        L = weight * mean( (r(F_s) - F_t)^2 ),   r = ReLU(BN(conv(.)))  (:class:`ConvBNRegressor`)

    The hint is the middle stage output, ``stages[len(stages) // 2]`` (stage 2 of a 3-stage CIFAR
    ResNet: the CRD repository's ``hint_layer=2``), or ``hint_layer`` (0 = stem) when given.
    Default weight 100 (CRD repository). The regressor trains with the student.

    Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015.
    """

    name = "fitnet"
    description = "FitNet: MSE between a conv-regressed student stage map and the teacher's hint stage"
    paper = "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015"
    default_weight = 100.0
    spot_kind = "mid"

    def __init__(self, student: FeatureShapes, teacher: FeatureShapes, weight: float | None = None,
                 hint_layer: int | None = None) -> None:
        super().__init__(student, teacher, weight)
        self.hint_student = self._hint_index(student, hint_layer, "student")
        self.hint_teacher = self._hint_index(teacher, hint_layer, "teacher")
        s_shape = map_shape(student.stages[self.hint_student], f"student stage {self.hint_student}", "fitnet")
        t_shape = map_shape(teacher.stages[self.hint_teacher], f"teacher stage {self.hint_teacher}", "fitnet")
        self.regressor = ConvBNRegressor(s_shape, t_shape, relu=True)

    @staticmethod
    def _hint_index(shapes: FeatureShapes, hint_layer: int | None, who: str) -> int:
        n = len(shapes.stages)
        if hint_layer is None:
            return n // 2
        if not 0 <= int(hint_layer) < n:
            raise ConfigError(f"fitnet hint_layer={hint_layer} is out of range: the {who} has stages 0..{n - 1} "
                              f"(0 = stem). Pick one in range or leave it unset for the middle stage.")
        return int(hint_layer)

    def spot_features(self, f: Features, teacher: bool = False) -> list[Tensor]:
        return [f.stages[self.hint_teacher if teacher else self.hint_student]]

    def spot_loss(self, i: int, s: Tensor, t: Tensor, ctx: DistillContext) -> Tensor:
        return self.weight * F.mse_loss(at_least_float32(self.regressor(s)), at_least_float32(t.detach()))
