"""Give any ``nn.Module`` the feature contract by tapping module paths with forward hooks.

    model = HookedModel(torchvision_resnet18,
                        stage_paths=["relu", "layer1", "layer2", "layer3", "layer4"],
                        embed_path=None, classifier_path="fc", input_shape=(3, 224, 224))
    f = model.forward_features(x)   # stages = outputs of those submodules, pooled = fc's input

Stage ``k`` is the output of the submodule at ``stage_paths[k]`` (the stem first); the pooled
embedding is the output of ``embed_path`` when given, else the input of the classifier module;
the logits are the wrapped module's output. Pre-activation stage outputs are not known to the
adapter: ``preact_stages`` repeats ``stages``.

The adapter cannot run a range of units (``run_units``, ``head``, ``embed``, ``blocks``; it has no
``units`` attribute): a foreign module's
forward is not a chain it can cut. Strategies that need it (SAKD's grafted pass, ABL) raise a
ConfigError naming the fix. Tapped outputs must not be modified in place by later layers
(e.g. an ``nn.ReLU(inplace=True)`` applied directly to a tapped module's output): tap the ReLU
itself instead.

The idea of distillation points addressed by module path comes from torchdistill
(Matsubara, "torchdistill: A Modular, Configuration-Driven Framework for Knowledge Distillation",
RRPR 2021).
"""
from __future__ import annotations

import difflib
from functools import partial
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError
from .contract import ContractModel, Features

_NO_UNITS = ("HookedModel wraps a foreign module and cannot run a range of its units ({what}). "
             "Use a zoo model (adakd list models) or subclass adakd.models.ContractModel for strategies "
             "that need it (sakd, abl).")


def resolve_module(root: nn.Module, path: str, role: str) -> nn.Module:
    """``root.get_submodule(path)``, or a ConfigError listing the closest existing paths."""
    names = [name for name, _ in root.named_modules() if name]
    try:
        return root.get_submodule(path)
    except AttributeError:
        close = difflib.get_close_matches(path, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(names[:30]) + (" ..." if len(names) > 30 else "")
        raise ConfigError(f"{role} path {path!r} is not a submodule of {type(root).__name__}.{hint} "
                          f"Known paths: {shown}") from None


def _first_tensor(value: Any, where: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    raise ShapeError(f"{where} produced {type(value).__name__}, not a tensor; tap a module that returns a tensor.")


class HookedModel(ContractModel):
    """Adapter: the contract's ``forward_features`` for any module, from forward hooks at module paths.

    ``stages[k]`` = output of ``module.get_submodule(stage_paths[k])``; ``pooled`` = output of
    ``embed_path`` (flattened) or the input of the classifier; ``logits`` = ``module(x)``.
    """

    def __init__(self, module: nn.Module, stage_paths: Sequence[str], embed_path: str | None,
                 classifier_path: str, input_shape: Sequence[int] = (3, 32, 32), family: str = "custom") -> None:
        super().__init__()
        if not stage_paths:
            raise ConfigError("HookedModel needs at least one stage path (the stem first).")
        self.module = module
        self.stage_paths = list(stage_paths)
        self.embed_path = embed_path
        self.classifier_path = classifier_path
        # kept out of the module tree: it already lives (and is saved) inside ``module``
        object.__setattr__(self, "_classifier", resolve_module(module, classifier_path, "classifier"))
        self.family = family
        self.input_shape = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
        self.stage_ends = list(range(len(self.stage_paths)))
        self._capture: dict[tuple[str, str], Tensor] | None = None
        # resolve every path before hooking anything, so a bad path leaves ``module`` untouched
        stage_modules = [resolve_module(module, path, f"stage {k}") for k, path in enumerate(self.stage_paths)]
        embed_module = None if embed_path is None else resolve_module(module, embed_path, "embed")
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for path, target in zip(self.stage_paths, stage_modules):
            self._handles.append(target.register_forward_hook(partial(self._store_output, ("stage", path))))
        if embed_module is not None:
            self._handles.append(embed_module.register_forward_hook(partial(self._store_output, ("pooled", embed_path))))
        else:
            self._handles.append(self._classifier.register_forward_pre_hook(partial(self._store_input, ("pooled", classifier_path))))

    def remove_hooks(self) -> None:
        """Detach the adapter's hooks from the wrapped module (the adapter is unusable afterwards)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def fc(self) -> nn.Module:  # type: ignore[override]
        """The classifier module (``classifier_path``)."""
        return self._classifier

    # -- hooks ----------------------------------------------------------------
    def _store_output(self, key: tuple[str, str], module: nn.Module, args: tuple, output: Any) -> None:
        if self._capture is not None:
            self._capture[key] = _first_tensor(output, f"module {key[1]!r}")

    def _store_input(self, key: tuple[str, str], module: nn.Module, args: tuple) -> None:
        if self._capture is not None:
            self._capture[key] = _first_tensor(args, "the classifier's input")

    # -- the contract -----------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return _first_tensor(self.module(x), "the wrapped module")

    def forward_features(self, x: Tensor) -> Features:
        self._capture = {}
        try:
            logits = self.forward(x)
            captured = self._capture
        finally:
            self._capture = None
        pooled_key = ("pooled", self.embed_path or self.classifier_path)
        missing = [p for p in self.stage_paths if ("stage", p) not in captured]
        if missing or pooled_key not in captured:
            where = missing or [pooled_key[1]]
            raise ShapeError(f"HookedModel: the module's forward never called {where}; "
                             "tap submodules that run in forward().")
        stages = [captured[("stage", p)] for p in self.stage_paths]
        pooled = torch.flatten(captured[pooled_key], 1)
        return Features(logits=logits, stages=stages, preact_stages=list(stages), pooled=pooled)

    # -- what the adapter cannot do ---------------------------------------------
    def run_units(self, h: Tensor, start: int, end: int | None = None) -> Tensor:
        raise ConfigError(_NO_UNITS.format(what="run_units"))

    def head(self, h: Tensor) -> tuple[Tensor, Tensor]:
        raise ConfigError(_NO_UNITS.format(what="head"))

    def embed(self, h: Tensor) -> Tensor:
        raise ConfigError(_NO_UNITS.format(what="embed"))

    @property
    def blocks(self) -> list[nn.Module]:
        raise ConfigError(_NO_UNITS.format(what="blocks"))

    def stage_unit_range(self, k: int) -> tuple[int, int]:
        raise ConfigError(_NO_UNITS.format(what="stage_unit_range"))


# --------------------------------------------------------------------------- a foreign chain

_PREFIX = "module."


def _strip_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: ``<prefix>module.X`` -> ``<prefix>X`` (the wrapped library's own names)."""
    inner = prefix + _PREFIX
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        metadata.pop(inner[:-1], None)
        for key in [k for k in metadata if k.startswith(inner)]:
            metadata[prefix + key[len(inner):]] = metadata.pop(key)


def _add_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: ``<prefix>X`` -> ``<prefix>module.X`` unless already prefixed."""
    inner = prefix + _PREFIX
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)


def downsamples(unit: nn.Module) -> bool:
    """Whether ``unit`` holds a convolution or pooling with a stride > 1 (it lowers the resolution)."""
    for m in unit.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            stride = m.stride if isinstance(m.stride, (tuple, list)) else (m.stride,)
            if any(int(s) > 1 for s in stride):
                return True
    return False


def resolution_stage_ends(units: Sequence[nn.Module]) -> list[int]:
    """Stage ends by resolution: the stem (0), every unit followed by a downsampling unit, the last unit."""
    last = len(units) - 1
    return [0] + [i for i in range(1, last + 1) if i == last or downsamples(units[i + 1])]


def even_stage_ends(num_blocks: int, num_stages: int = 4) -> list[int]:
    """Stage ends for a model that never downsamples (ViT): ``num_stages`` equal groups of blocks."""
    num_stages = max(1, min(num_stages, num_blocks))
    return [0] + sorted({round(num_blocks * (k + 1) / num_stages) for k in range(num_stages)})


class ChainAdapter(ContractModel):
    """The full contract for a foreign module whose forward is a chain: stem, blocks, then a head.

    ``stem``, ``blocks``, ``embed`` and ``classifier`` are (views of) the wrapped module's own submodules
    (modules, not functions, so that ``copy.deepcopy`` maps them onto the copy); ``embed`` maps the last
    block's output to the pooled embedding (flattened) and ``classifier`` that to the logits, so that
    ``classifier(embed(blocks[-1](...blocks[0](stem(x)))))`` is ``module(x)`` (the vision tests check
    this for every family). ``forward`` is the wrapped module's own forward; ``forward_features``,
    ``run_units``, ``head`` and ``blocks`` come from :class:`ContractModel`, so SAKD and ABL work.
    The state dict uses the wrapped module's own key names (a library weight file loads as is).
    """

    def __init__(self, module: nn.Module, stem: nn.Module, blocks: Sequence[nn.Module],
                 embed: nn.Module, classifier: nn.Module, input_shape: Sequence[int], family: str,
                 stage_ends: Sequence[int] | None = None) -> None:
        super().__init__()
        self.module = module
        # views, not children: the parameters live (and are saved once) under the wrapped module's names
        object.__setattr__(self, "units", nn.ModuleList([stem, *blocks]))
        object.__setattr__(self, "fc", classifier)
        object.__setattr__(self, "embed_module", embed)
        self.stage_ends = list(stage_ends) if stage_ends is not None else resolution_stage_ends(self.units)
        self.family = family
        self.input_shape = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
        self.register_state_dict_post_hook(_strip_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    def embed(self, h: Tensor) -> Tensor:
        return torch.flatten(self.embed_module(h), 1)

    def forward(self, x: Tensor) -> Tensor:
        return _first_tensor(self.module(x), "the wrapped module")
