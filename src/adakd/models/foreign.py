"""Weights saved by other code bases, loaded into the zoo model of the same architecture.

A *layout* is a naming of a model's state_dict: ``adakd`` (ours, ``units.3.conv1.weight``),
``reference`` (the CRD/RepDistiller code that mdistiller copied: ``layer1.2.conv1.weight``, the
names of every published CIFAR-100 teacher ``<arch>_vanilla/ckpt_epoch_240.pth``) and
``torchvision`` (the ``tv:`` models, whose state dict is torchvision's own). Each model family
declares its reference layout beside its code (``reference_modules()``: our module path ->
theirs, derived from the units/stage structure); here it is expanded to every tensor's key.

Reading a foreign state dict:

* the container is unwrapped: a bare state dict, or ``{"model" | "state_dict" | "net": sd, ...}``
  (RepDistiller and mdistiller save ``{"model": sd, "epoch": ..., ...}``);
* a key prefix is stripped where one fits (``module.`` of DataParallel, ``student.`` /
  ``module.student.`` of a saved distiller: mdistiller saves ``distiller.state_dict()``, whose
  teacher and connectors are skipped);
* the (layout, prefix) whose expected keys and shapes the file holds exactly is taken, else ONE
  :class:`~adakd.errors.ConfigError` names the closest one (most keys with the right shape) and
  its first missing / unexpected / mis-shaped keys.

``num_batches_tracked`` buffers may be absent (files of PyTorch < 0.4.1): the model keeps its own.
Files are read elsewhere (``engine/checkpoint.py``, weights-only); this module sees tensors only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError

#: ``teacher.format`` / ``--format`` values; the code bases' names are aliases of their layout.
FORMAT_ALIASES = {"repdistiller": "reference", "mdistiller": "reference", "crd": "reference"}
FORMATS = ("auto", "adakd", "reference", "repdistiller", "mdistiller", "torchvision")
#: Prefixes a saved model's keys may carry (DataParallel, a saved distiller's student), tried in this order.
PREFIXES = ("", "module.", "student.", "module.student.", "model.", "module.model.", "s_net.", "module.s_net.")
#: Container keys under which a checkpoint dict holds its state dict.
CONTAINER_KEYS = ("model", "state_dict", "net", "student")
_OPTIONAL = "num_batches_tracked"


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any) -> dict[str, Tensor] | None:
    """The state dict inside a loaded checkpoint object (a bare one, or under ``model`` / ``state_dict`` /
    ``net`` / ``student``), or None where there is none."""
    if is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            if is_state_dict(obj.get(key)):
                return dict(obj[key])
    return None


def expand_module_map(model: nn.Module, modules: Mapping[str, str]) -> dict[str, str]:
    """``{our state_dict key: their key}`` from ``{our module path: their module path}`` (longest
    matching path wins; ``""`` maps the root). Every key of ``model.state_dict()`` must be covered."""
    out: dict[str, str] = {}
    for key in model.state_dict():
        path, _, leaf = key.rpartition(".")
        probe = path
        while probe not in modules:
            if not probe:
                raise KeyError(f"no reference name for {key!r}")
            probe = probe.rpartition(".")[0]
        theirs = modules[probe] + path[len(probe):]
        out[key] = f"{theirs}.{leaf}" if theirs else leaf
    return out


def native_format(model: nn.Module) -> str:
    """The layout of the model's own state dict: ``adakd`` for the zoo, ``torchvision`` for ``tv:`` models."""
    return str(getattr(model, "native_format", "adakd"))


def layouts(model: nn.Module) -> dict[str, dict[str, str]]:
    """Every layout ``model`` loads: ``{layout name: {our key: their key}}``, its own first."""
    own = {k: k for k in model.state_dict()}
    out = {native_format(model): own}
    reference = getattr(model, "reference_modules", None)
    modules = reference() if callable(reference) else None  # ContractModel's; None: no reference layout
    if modules is not None:
        out["reference"] = expand_module_map(model, modules)
    return out


def canonical_format(fmt: str | None) -> str:
    """``None``/``auto`` -> ``auto``; an alias -> its layout; an unknown name -> ConfigError."""
    fmt = (fmt or "auto").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown weights format {fmt!r}; use one of {', '.join(FORMATS)}.")
    return FORMAT_ALIASES.get(fmt, fmt)


@dataclass
class LayoutFit:
    """How well a state dict (after stripping ``prefix``) fits one layout of the model."""

    layout: str
    prefix: str
    matched: int  # expected keys present with the right shape
    missing: list[str]  # their names, absent (num_batches_tracked excepted)
    unexpected: list[str]
    wrong_shape: list[str]
    expected: int

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def describe(self, theirs: Mapping[str, Tensor], ours: Mapping[str, tuple[int, ...]]) -> str:
        """``layout 'reference' [with key prefix 'module.']: 60/62 keys fit; 1 shape mismatch: ...``"""
        parts = [f"{self.matched}/{self.expected} keys fit"]
        if self.wrong_shape:
            parts.append(f"{len(self.wrong_shape)} shape mismatches: " + ", ".join(
                f"{k} file {tuple(theirs[k].shape)} vs model {ours[k]}" for k in self.wrong_shape[:3]))
        if self.missing:
            parts.append(f"{len(self.missing)} missing: " + ", ".join(f"{k} {ours[k]}" for k in self.missing[:3]))
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: " + ", ".join(
                f"{k} {tuple(theirs[k].shape)}" for k in self.unexpected[:3]))
        where = f"layout {self.layout!r}" + (f" with key prefix {self.prefix!r}" if self.prefix else "")
        return f"{where}: " + "; ".join(parts)


def _fit(layout: str, mapping: Mapping[str, str], own: Mapping[str, Tensor], sd: Mapping[str, Tensor],
         prefix: str) -> LayoutFit:
    theirs = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    expected = {their: tuple(own[our].shape) for our, their in mapping.items()}
    missing = [k for k in expected if k not in theirs and not k.endswith(_OPTIONAL)]
    wrong = [k for k in expected if k in theirs and tuple(theirs[k].shape) != expected[k]]
    unexpected = [k for k in theirs if k not in expected]
    matched = sum(1 for k in expected if k in theirs and tuple(theirs[k].shape) == expected[k])
    return LayoutFit(layout, prefix, matched, missing, unexpected, wrong, len(expected))


def match_layout(model: nn.Module, state_dict: Mapping[str, Tensor], fmt: str | None = None) -> LayoutFit:
    """The (layout, prefix) that fits ``state_dict`` exactly; ConfigError naming the closest otherwise."""
    fmt = canonical_format(fmt)
    candidates = layouts(model)
    if fmt != "auto":
        if fmt not in candidates:
            raise ConfigError(f"{type(model).__name__} has no {fmt!r} weights layout; it loads "
                              f"{', '.join(candidates)} (format: auto detects).")
        candidates = {fmt: candidates[fmt]}
    own = model.state_dict()
    fits = [_fit(name, mapping, own, state_dict, prefix) for name, mapping in candidates.items()
            for prefix in PREFIXES if not prefix or any(k.startswith(prefix) for k in state_dict)]
    for fit in fits:
        if fit.exact:
            return fit
    best = max(fits, key=lambda f: (f.matched, -len(f.unexpected) - len(f.missing)))
    mapping = candidates[best.layout]
    ours = {their: tuple(own[our].shape) for our, their in mapping.items()}
    theirs = {k[len(best.prefix):]: v for k, v in state_dict.items() if k.startswith(best.prefix)}
    raise ConfigError(
        f"the weights fit no layout of {type(model).__name__} ({', '.join(candidates)}); closest is "
        f"{best.describe(theirs, ours)}. Check the model name and num_classes against the file, or force "
        f"the layout with teacher.format / --format ({', '.join(FORMATS)}).")


def load_foreign_state_dict(model: nn.Module, state_dict: Mapping[str, Any], format: str | None = None) -> str:
    """Load a state dict (or a ``{"model": sd, ...}`` checkpoint object) in any layout ``model`` knows
    into ``model``; returns the layout it was read as (``adakd``, ``reference``, ``torchvision``)."""
    sd = unwrap_state_dict(state_dict)
    if sd is None:
        raise ConfigError("the weights object holds no state dict (expected a dict of tensors, or one under "
                          f"{'/'.join(CONTAINER_KEYS)}).")
    fit = match_layout(model, sd, format)
    mapping = layouts(model)[fit.layout]
    own = model.state_dict()
    renamed = {}
    for our, their in mapping.items():
        key = fit.prefix + their
        renamed[our] = sd[key] if key in sd else own[our]  # an absent num_batches_tracked keeps ours
    model.load_state_dict(renamed)
    return fit.layout


def to_reference_state_dict(model: nn.Module, format: str = "reference") -> dict[str, Tensor]:
    """``model``'s weights named as in ``format``'s layout (the inverse of :func:`load_foreign_state_dict`)."""
    fmt = canonical_format(format)
    candidates = layouts(model)
    if fmt == "auto" or fmt not in candidates:
        raise ConfigError(f"{type(model).__name__} has no {format!r} weights layout; it has "
                          f"{', '.join(candidates)}.")
    own = model.state_dict()
    return {their: own[our].detach().clone() for our, their in candidates[fmt].items()}


__all__ = ["FORMATS", "LayoutFit", "canonical_format", "expand_module_map", "layouts", "load_foreign_state_dict",
           "match_layout", "native_format", "to_reference_state_dict", "unwrap_state_dict"]
