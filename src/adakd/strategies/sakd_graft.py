"""SAKD's spots and its grafted two-column network (docs/methods.md section 3).

Spots are where a distiller reads the two models (found from its ``spot_features``): stage
outputs, the pooled embedding, and always the logits, last. The policy is trained through a
*grafted* pass that runs the student and teacher columns side by side; at spot k, with the
decision a in {0, 1} (1 = route to the teacher),

    t <- (1 - a) * H_k(s_k) + a * t_k          (H: student -> teacher adapter)
    s <- (1 - a) * s_k      + a * G_k(t_k)     (G: teacher -> student adapter)
    z_graft = (1 - a_L) * z_student_column + a_L * z_teacher_column

Adapters are conv-BN-ReLU for maps (:class:`~adakd.losses.connectors.ConvBNRegressor`, any
spatial size ratio) and Linear for vectors. With a = 0 everywhere the pass is the student's own
forward. The student's BatchNorm statistics are never changed by it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError
from ..losses.base import Distiller
from ..losses.connectors import ConvBNRegressor, map_shape
from ..models.contract import ContractModel, Features, FeatureShapes

#: How the student's BatchNorm layers normalise in the grafted pass: with their running statistics
#: (eval mode, as the SAKD code does) or with the batch's statistics (running buffers restored after).
GRAFT_BN_MODES = ("running", "batch")


@dataclass(frozen=True)
class Spot:
    """A place where SAKD decides per sample whether to distil.

    kind: "stage" (a stage output; index 0 = stem), "pooled" (the embedding) or "logits".
    """

    kind: str
    student_index: int = -1
    teacher_index: int = -1

    @property
    def name(self) -> str:
        if self.kind != "stage":
            return self.kind
        if self.student_index == self.teacher_index:
            return f"stage{self.student_index}"
        return f"stage{self.student_index}_t{self.teacher_index}"

    def order(self) -> tuple[int, int]:
        return {"stage": 0, "pooled": 1, "logits": 2}[self.kind], self.student_index


@dataclass(frozen=True)
class SpotTerm:
    """Loss ``part`` read at its ``j``-th spot feature, which lies at ``spots[spot]``."""

    key: str  # the part's key in the losses config (the term's name)
    j: int
    spot: int


def _probe_features(shapes: FeatureShapes) -> Features:
    """Features of distinct (tiny) tensors, so the spot a distiller reads can be told by identity."""
    def z(shape: Sequence[int]) -> Tensor:
        return torch.zeros(1, *shape)

    return Features(logits=z((shapes.num_classes,)), stages=[z(s) for s in shapes.stages],
                    preact_stages=[z(s) for s in shapes.stages], pooled=z((shapes.pooled,)))


def _locate(f: Features, tensor: Tensor) -> tuple[str, int] | None:
    if tensor is f.logits:
        return "logits", -1
    if tensor is f.pooled:
        return "pooled", -1
    for k, (s, p) in enumerate(zip(f.stages, f.preact_stages)):
        if tensor is s or tensor is p:  # a pre-activation stage is grafted at its stage output
            return "stage", k
    return None


def distiller_parts(distiller: Distiller | None) -> dict[str, Distiller]:
    """The single losses of ``distiller``: ``{config key: loss}`` (a CompositeDistiller's parts)."""
    if distiller is None:
        return {}
    parts = getattr(distiller, "parts", None)
    if isinstance(parts, nn.ModuleDict):
        return dict(parts.items())
    return {distiller.name: distiller}


def find_spots(parts: dict[str, Distiller], student: FeatureShapes,
               teacher: FeatureShapes) -> tuple[list[Spot], list[SpotTerm]]:
    """The ordered spots (stages by depth, then pooled, then logits, always last) and, for every
    spot feature of every part, where it lies. ConfigError when a part does not decompose."""
    fs, ft = _probe_features(student), _probe_features(teacher)
    located: list[tuple[str, int, Spot]] = []
    for key, part in parts.items():
        if type(part).spot_loss is Distiller.spot_loss:
            raise ConfigError(
                f"sakd routes each loss per spot, but loss {key!r} does not decompose into spots (no spot_loss). "
                "Use losses that do (at, cc, crd, fitnet, ft, nst, pkt, rkd, sp, vid, kd, ...) or strategy standard.")
        try:
            s_feats, t_feats = part.spot_features(fs), part.spot_features(ft, teacher=True)
        except NotImplementedError:
            raise ConfigError(f"sakd: loss {key!r} does not decompose into spots; "
                              "use strategy standard for it.") from None
        if len(s_feats) != len(t_feats):
            raise ConfigError(f"sakd: loss {key!r} reads {len(s_feats)} student and {len(t_feats)} teacher spots.")
        for j, (s, t) in enumerate(zip(s_feats, t_feats)):
            ls, lt = _locate(fs, s), _locate(ft, t)
            if ls is None or lt is None or ls[0] != lt[0]:
                raise ConfigError(
                    f"sakd: loss {key!r} reads a feature that is not a stage output, the pooled embedding or the "
                    "logits of both models at the same kind of place, so it cannot be grafted; use strategy standard.")
            located.append((key, j, Spot(ls[0], ls[1], lt[1])))
    spots = sorted({spot for _, _, spot in located} | {Spot("logits")}, key=Spot.order)
    stages = [s for s in spots if s.kind == "stage"]
    for a, b in zip(stages, stages[1:]):
        if not (a.student_index < b.student_index and a.teacher_index < b.teacher_index):
            raise ConfigError(
                f"sakd grafts the spots in depth order, but the losses pair student stage {a.student_index} with "
                f"teacher stage {a.teacher_index} and student stage {b.student_index} with teacher stage "
                f"{b.teacher_index}. Pair the stages in the same order in both models (e.g. fitnet hint_layer).")
    index = {spot: i for i, spot in enumerate(spots)}
    return spots, [SpotTerm(key, j, index[spot]) for key, j, spot in located]


class GraftAdapters(nn.Module):
    """H (student -> teacher) and G (teacher -> student) for every spot but the logits."""

    def __init__(self, spots: Sequence[Spot], student: FeatureShapes, teacher: FeatureShapes) -> None:
        super().__init__()
        to_teacher, to_student = [], []
        for spot in spots:
            if spot.kind == "logits":
                continue
            if spot.kind == "pooled":
                to_teacher.append(nn.Linear(student.pooled, teacher.pooled))
                to_student.append(nn.Linear(teacher.pooled, student.pooled))
                continue
            s = map_shape(student.stages[spot.student_index], f"student stage {spot.student_index}", "sakd")
            t = map_shape(teacher.stages[spot.teacher_index], f"teacher stage {spot.teacher_index}", "sakd")
            to_teacher.append(ConvBNRegressor(s, t, relu=True))
            to_student.append(ConvBNRegressor(t, s, relu=True))
        self.to_teacher = nn.ModuleList(to_teacher)
        self.to_student = nn.ModuleList(to_student)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module, mode: str) -> Iterator[None]:
    """Run ``model`` without changing its BatchNorm buffers.

    ``running``: BN layers in eval mode (normalise with the running statistics).
    ``batch``: BN layers keep their mode; their buffers are restored afterwards.
    """
    if mode not in GRAFT_BN_MODES:
        raise ConfigError(f"sakd graft_bn={mode!r}: use one of {', '.join(GRAFT_BN_MODES)}.")
    norms = batch_norms(model)
    if mode == "running":
        modes = [m.training for m in norms]
        for m in norms:
            m.eval()
        try:
            yield
        finally:
            for m, was in zip(norms, modes):
                m.train(was)
        return
    # The pass updates throw-away copies; the original buffers are never written (not even restored in
    # place: the student's own forward saved them for its backward, which checks their versions).
    saved = [{k: v for k, v in m.named_buffers(recurse=False) if v is not None} for m in norms]
    for m, buffers in zip(norms, saved):
        for k, v in buffers.items():
            setattr(m, k, v.clone())
    try:
        yield
    finally:
        for m, buffers in zip(norms, saved):
            for k, v in buffers.items():
                setattr(m, k, v)


def _mix(a: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """(1 - a) * x + a * y with a [B] broadcast over the feature dims."""
    w = a.view(-1, *([1] * (x.dim() - 1))).to(torch.promote_types(x.dtype, a.dtype))
    return (1.0 - w) * x + w * y


def check_graftable(model: ContractModel, who: str) -> None:
    if not hasattr(model, "units") or not hasattr(model, "stage_ends"):
        raise ConfigError(f"sakd runs the {who} unit by unit (run_units, head), which this {who} does not offer; "
                          "use a zoo model or a ContractModel subclass.")


def grafted_logits(student: ContractModel, teacher: ContractModel, spots: Sequence[Spot], adapters: GraftAdapters,
                   a: Tensor, x: Tensor, first_teacher: Tensor | None = None,
                   first_student: Tensor | None = None) -> Tensor:
    """The grafted two-column pass (module docstring); ``a`` [B, S] in {0, 1}, the logits spot last.

    ``first_teacher`` / ``first_student``: the two columns' features at the first spot when they are
    already known (an eval-mode teacher's are the same in every pass); they save that first segment.
    """
    s, t = x, x
    s_pos = t_pos = 0
    pooled = False
    for i, spot in enumerate(spots[:-1]):
        if spot.kind == "stage":
            s_end = student.stage_unit_range(spot.student_index)[1]
            t_end = teacher.stage_unit_range(spot.teacher_index)[1]
            s_k = first_student if i == 0 and first_student is not None else student.run_units(s, s_pos, s_end)
            t_k = first_teacher if i == 0 and first_teacher is not None else teacher.run_units(t, t_pos, t_end)
            s_pos, t_pos = s_end, t_end
        else:  # pooled: the rest of the units, then the embedding
            s_k = first_student if i == 0 and first_student is not None else student.embed(student.run_units(s, s_pos))
            t_k = first_teacher if i == 0 and first_teacher is not None else teacher.embed(teacher.run_units(t, t_pos))
            pooled = True
        t = _mix(a[:, i], adapters.to_teacher[i](s_k), t_k)
        s = _mix(a[:, i], s_k, adapters.to_student[i](t_k))
    if pooled:
        z_s, z_t = student.fc(s), teacher.fc(t)
    else:
        z_s = student.head(student.run_units(s, s_pos))[1]
        z_t = teacher.head(teacher.run_units(t, t_pos))[1]
    return _mix(a[:, -1], z_s.float(), z_t.float())


def spot_feature(f: Features, spot: Spot, teacher: bool) -> Tensor:
    """The feature of ``f`` at ``spot`` (stage output, pooled or logits)."""
    if spot.kind == "logits":
        return f.logits
    if spot.kind == "pooled":
        return f.pooled
    return f.stages[spot.teacher_index if teacher else spot.student_index]


def check_adapters(spots: Sequence[Spot], adapters: GraftAdapters, student: FeatureShapes,
                   teacher: FeatureShapes) -> None:
    """ShapeError unless every adapter maps one model's spot shape onto the other's (a cheap probe)."""
    with torch.no_grad():
        for i, spot in enumerate(spots[:-1]):
            s_shape = (student.pooled,) if spot.kind == "pooled" else student.stages[spot.student_index]
            t_shape = (teacher.pooled,) if spot.kind == "pooled" else teacher.stages[spot.teacher_index]
            h, g = adapters.to_teacher[i], adapters.to_student[i]
            was = h.training
            h.eval(), g.eval()
            try:
                out_t = h(torch.zeros(2, *s_shape))
                out_s = g(torch.zeros(2, *t_shape))
            finally:
                h.train(was), g.train(was)
            if tuple(out_t.shape[1:]) != tuple(t_shape) or tuple(out_s.shape[1:]) != tuple(s_shape):
                raise ShapeError(f"sakd adapters at {spot.name}: {s_shape} -> {tuple(out_t.shape[1:])} (want "
                                 f"{t_shape}), {t_shape} -> {tuple(out_s.shape[1:])} (want {s_shape}).")
