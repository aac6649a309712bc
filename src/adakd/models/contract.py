"""The feature contract every model in adakd exposes.

A model is a chain of *units*: ``units[0]`` is the stem, ``units[1:]`` are the
blocks (residual blocks, VGG conv groups, inverted-residual/shuffle units) in
order. ``stage_ends[k]`` is the index of the last unit of stage ``k``
(``stage_ends[0] == 0``: the stem is stage 0). After the last unit comes the
*head*: ``embed(h)`` (pooling/flatten -> [B, D]) and the classifier ``fc``.

    logits = fc(embed(units[N](...units[1](units[0](x)))))

From that one description the base class gives every method what it needs:

* ``forward(x)`` -> logits
* ``forward_features(x)`` -> :class:`Features` (logits, stage outputs stem first,
  pre-activation stage outputs, pooled embedding)
* ``run_units(h, start, end)`` runs ``units[start:end]`` (SAKD's grafted pass,
  ABL's block-wise gradients); ``head(h)`` -> (pooled, logits)
* ``blocks`` (ordered, for ABL), ``stage_unit_range(k)``, ``feature_shapes()``.

A unit may define ``forward_preact(x) -> (out, preact)``; where it does not,
its pre-activation output is its output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn


@dataclass
class Features:
    """Everything a distiller may read from one forward pass."""

    logits: Tensor  # [B, C]
    stages: list[Tensor]  # stem output, then each stage's output (post-activation)
    preact_stages: list[Tensor]  # same positions, before the stage's final activation
    pooled: Tensor  # [B, D]: the embedding the classifier reads

    def subset(self, index: Tensor) -> "Features":
        """The same features for the samples selected by ``index`` (bool mask or indices)."""
        return Features(
            logits=self.logits[index],
            stages=[s[index] for s in self.stages],
            preact_stages=[s[index] for s in self.preact_stages],
            pooled=self.pooled[index],
        )

    def detach(self) -> "Features":
        return Features(
            logits=self.logits.detach(),
            stages=[s.detach() for s in self.stages],
            preact_stages=[s.detach() for s in self.preact_stages],
            pooled=self.pooled.detach(),
        )


@dataclass
class FeatureShapes:
    """Per-sample shapes of a model's features (no batch dim); distillers size their connectors from it."""

    stages: list[tuple[int, ...]]  # (C, H, W) per stage, stem first
    pooled: int
    num_classes: int
    family: str = ""  # model family ("resnet", "vgg", ...), SAKD's same-family test
    extra: dict = field(default_factory=dict)

    @property
    def num_stages(self) -> int:
        """Stages after the stem."""
        return len(self.stages) - 1

    @classmethod
    def of(cls, features: Features, family: str = "") -> "FeatureShapes":
        return cls(
            stages=[tuple(s.shape[1:]) for s in features.stages],
            pooled=int(features.pooled.shape[1]),
            num_classes=int(features.logits.shape[1]),
            family=family,
        )


def _run_unit(unit: nn.Module, h: Tensor, want_preact: bool) -> tuple[Tensor, Tensor]:
    if want_preact and hasattr(unit, "forward_preact"):
        return unit.forward_preact(h)
    out = unit(h)
    return out, out


class ContractModel(nn.Module):
    """Base class of every zoo model; see the module docstring for the contract.

    Subclasses set ``self.units`` (nn.ModuleList), ``self.stage_ends`` (list[int]),
    ``self.fc`` (the classifier), ``self.family`` (str), ``self.input_shape``
    ((C, H, W) the model was built for) and may override ``embed``.
    """

    units: nn.ModuleList
    stage_ends: list[int]
    fc: nn.Module
    family: str = ""
    input_shape: tuple[int, int, int] = (3, 32, 32)
    #: The layout of ``state_dict()`` (models/foreign.py): "adakd", or the wrapped library's ("torchvision").
    native_format: str = "adakd"

    def reference_modules(self) -> dict[str, str] | None:
        """Our module paths -> the reference code's (RepDistiller/mdistiller) for the same architecture, so
        their weight files load (models/foreign.py); None where the family has no reference layout."""
        return None

    # -- the head ---------------------------------------------------------
    def embed(self, h: Tensor) -> Tensor:
        """Pooled embedding [B, D] from the last unit's output (default: global average pool)."""
        if h.dim() == 4:
            h = torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)
        return h

    def head(self, h: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.embed(h)
        return pooled, self.fc(pooled)

    # -- running ------------------------------------------------------------
    def run_units(self, h: Tensor, start: int, end: int | None = None) -> Tensor:
        """Run ``units[start:end]`` on ``h``."""
        for unit in list(self.units)[start:end]:
            h = unit(h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.run_units(x, 0))[1]

    def forward_features(self, x: Tensor) -> Features:
        ends = set(self.stage_ends)
        stages: list[Tensor] = []
        preacts: list[Tensor] = []
        h = x
        for i, unit in enumerate(self.units):
            h, pre = _run_unit(unit, h, i in ends)
            if i in ends:
                stages.append(h)
                preacts.append(pre)
        pooled, logits = self.head(h)
        return Features(logits=logits, stages=stages, preact_stages=preacts, pooled=pooled)

    # -- structure ------------------------------------------------------------
    @property
    def blocks(self) -> list[nn.Module]:
        """The ordered blocks (every unit after the stem)."""
        return list(self.units)[1:]

    @property
    def num_stages(self) -> int:
        """Stages after the stem."""
        return len(self.stage_ends) - 1

    def stage_unit_range(self, k: int) -> tuple[int, int]:
        """``units[start:end]`` of stage ``k`` (k = 0 is the stem)."""
        start = 0 if k == 0 else self.stage_ends[k - 1] + 1
        return start, self.stage_ends[k] + 1

    def preact_bns(self) -> list[nn.Module | None]:
        """Per stage output (stem first): the BatchNorm whose output is that stage's
        pre-activation feature, or None where there is none (OFD's margin reads it)."""
        return [None] * len(self.stage_ends)

    @torch.no_grad()
    def feature_shapes(self, input_shape: Sequence[int] | None = None) -> FeatureShapes:
        """Probe a dummy forward (batch 2, eval mode, BN statistics untouched)."""
        shape = tuple(input_shape or self.input_shape)
        was_training = self.training
        self.eval()
        try:
            param = next(self.parameters())
            x = torch.zeros((2, *shape), device=param.device, dtype=param.dtype)
            f = self.forward_features(x)
        finally:
            self.train(was_training)
        return FeatureShapes.of(f, family=self.family)
