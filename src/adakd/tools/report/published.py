"""Published CIFAR-100 top-1 (%) of the KD literature, as data, for ``adakd report`` to show beside ours.

Sources (recipes and weights: docs/recipes.md; ABL: docs/methods.md section 1):
  * the CRD table (Tian et al., ICLR 2020): teacher, student and the classic methods; **last epoch**;
  * DKD rows from the DKD authors' mdistiller (Zhao et al., CVPR 2022): **best epoch, mean of 5 runs**;
  * ReviewKD rows from its paper (Chen et al., CVPR 2021);
  * ABL Table 8 (adaptive block-wise learning): Standard -> Adaptive for SP/CC/RKD/VID/PKT, mean of 5 runs.

Models are keyed by their zoo names (``resnet56``, ``wrn_40_2``, ``MobileNetV2``, ``ShuffleV1``, ...);
methods by config id (``kd``, ``dkd``, ``fitnet``, ...; ``scratch`` = the student trained alone,
``teacher`` = the teacher trained alone); strategies by registry name (``standard``, ``abl``).
"""
from __future__ import annotations

from dataclasses import dataclass

#: Pair id (config file stem in configs/cifar100/<method>/) -> (teacher, student), in the tables' order.
PAIRS: dict[str, tuple[str, str]] = {
    "wrn40_2_wrn16_2": ("wrn_40_2", "wrn_16_2"),
    "wrn40_2_wrn40_1": ("wrn_40_2", "wrn_40_1"),
    "res56_res20": ("resnet56", "resnet20"),
    "res110_res20": ("resnet110", "resnet20"),
    "res110_res32": ("resnet110", "resnet32"),
    "res32x4_res8x4": ("resnet32x4", "resnet8x4"),
    "vgg13_vgg8": ("vgg13", "vgg8"),
    "vgg13_mv2": ("vgg13", "MobileNetV2"),
    "res50_mv2": ("ResNet50", "MobileNetV2"),
    "res50_vgg8": ("ResNet50", "vgg8"),
    "res32x4_shv1": ("resnet32x4", "ShuffleV1"),
    "res32x4_shv2": ("resnet32x4", "ShuffleV2"),
    "wrn40_2_shv1": ("wrn_40_2", "ShuffleV1"),
}
SAME_FAMILY = tuple(list(PAIRS)[:7])
CROSS_FAMILY = tuple(list(PAIRS)[7:])

CRD = "CRD table (last epoch)"
DKD = "mdistiller (best epoch, mean of 5)"
REVIEWKD = "ReviewKD paper"
ABL = "ABL Table 8 (mean of 5)"

_NA = None
# Rows: method -> one value per pair of SAME_FAMILY / CROSS_FAMILY (None: not published).
_SAME: dict[str, tuple[str, list[float | None]]] = {
    "teacher": (CRD, [75.61, 75.61, 72.34, 74.31, 74.31, 79.42, 74.64]),
    "scratch": (CRD, [73.26, 71.98, 69.06, 69.06, 71.14, 72.50, 70.36]),
    "kd": (CRD, [74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98]),
    "fitnet": (CRD, [73.58, 72.24, 69.21, 68.99, 71.06, 73.50, 71.02]),
    "at": (CRD, [74.08, 72.77, 70.55, 70.22, 72.31, 73.44, 71.43]),
    "sp": (CRD, [73.83, 72.43, 69.67, 70.04, 72.69, 72.94, 72.68]),
    "cc": (CRD, [73.56, 72.21, 69.63, 69.48, 71.48, 72.97, 70.71]),
    "vid": (CRD, [74.11, 73.30, 70.38, 70.16, 72.61, 73.09, 71.23]),
    "rkd": (CRD, [73.35, 72.22, 69.61, 69.25, 71.82, 71.90, 71.48]),
    "pkt": (CRD, [74.54, 73.45, 70.34, 70.25, 72.61, 73.64, 72.88]),
    "crd": (CRD, [75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94]),
    "dkd": (DKD, [76.23, 74.81, 71.97, 71.06, 74.11, 76.32, 74.68]),
    "reviewkd": (REVIEWKD, [_NA, 75.09, 71.89, _NA, _NA, 75.63, _NA]),
}
_CROSS: dict[str, tuple[str, list[float | None]]] = {
    "teacher": (CRD, [74.64, 79.34, 79.34, 79.42, 79.42, 75.61]),
    "scratch": (CRD, [64.60, 64.60, 70.36, 70.50, 71.82, 70.50]),
    "kd": (CRD, [67.37, 67.35, 73.81, 74.07, 74.45, 74.83]),
    "dkd": (DKD, [69.71, 70.35, _NA, 76.45, 77.07, 76.70]),
    "crd": (CRD, [69.73, 69.11, 74.30, 75.11, 75.65, 76.05]),
}
# ABL Table 8: method -> {pair: (standard, adaptive)}.
_ABL_PAIRS = ("res56_res20", "res110_res32", "res32x4_res8x4", "wrn40_2_wrn40_1", "vgg13_vgg8")
_ABL: dict[str, list[tuple[float, float]]] = {
    "sp": [(69.67, 71.06), (72.69, 73.07), (72.94, 74.20), (72.43, 73.27), (72.68, 73.52)],
    "cc": [(69.63, 69.91), (71.48, 72.19), (72.97, 73.46), (72.21, 72.04), (70.71, 71.67)],
    "rkd": [(69.61, 69.83), (71.82, 72.16), (71.90, 73.22), (72.22, 72.45), (71.48, 71.69)],
    "vid": [(70.38, 70.75), (72.61, 72.85), (73.09, 73.59), (73.30, 72.96), (71.23, 71.74)],
    "pkt": [(70.34, 70.96), (72.61, 73.02), (73.64, 74.64), (73.45, 73.40), (72.88, 73.06)],
}


@dataclass(frozen=True)
class Published:
    top1: float
    source: str


def _build_table() -> dict[tuple[str, str, str, str], Published]:
    """(teacher, student, method, strategy) -> Published. ``scratch``/``teacher`` rows have strategy "standard"."""
    table: dict[tuple[str, str, str, str], Published] = {}
    for pairs, rows in ((SAME_FAMILY, _SAME), (CROSS_FAMILY, _CROSS)):
        for method, (source, values) in rows.items():
            for pair, value in zip(pairs, values, strict=True):
                if value is not None:
                    teacher, student = PAIRS[pair]
                    table[(teacher, student, method, "standard")] = Published(value, source)
    for method, values in _ABL.items():
        for pair, (_, adaptive) in zip(_ABL_PAIRS, values, strict=True):
            teacher, student = PAIRS[pair]
            table[(teacher, student, method, "abl")] = Published(adaptive, ABL)
    return table


TABLE = _build_table()


def _norm(name: str | None) -> str:
    return (name or "").lower().replace("-", "_")


def lookup(dataset: str | None, teacher: str | None, student: str | None, method: str,
           strategy: str = "standard") -> Published | None:
    """The published number for a CIFAR-100 run, or None (other dataset, pair or method).

    ``method`` is the config id (``kd``, ``crd``, ... ``scratch``); a student trained alone
    (``scratch``, no teacher) matches the "Student" row of any pair with that student, and a
    teacher trained alone (``teacher``) the "Teacher" row of any pair with that teacher.
    """
    if _norm(dataset) != "cifar100":
        return None
    method, strategy = _norm(method), _norm(strategy or "standard")
    t, s = _norm(teacher), _norm(student)
    for (pt, ps, pm, pstrat), value in TABLE.items():
        if pm != method or pstrat != strategy:
            continue
        if method == "scratch" and _norm(ps) == s:
            return value
        if method == "teacher" and _norm(pt) == s:
            return value
        if _norm(pt) == t and _norm(ps) == s:
            return value
    return None
