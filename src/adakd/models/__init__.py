"""Model zoo: every model implements :class:`~adakd.models.contract.ContractModel`.

Importing this package registers the CIFAR-100 zoo in :data:`adakd.registry.MODELS`;
:func:`build_model` builds one by name. :class:`HookedModel` adapts any other ``nn.Module``.
"""
from __future__ import annotations

import inspect
from typing import Any

from ..errors import ConfigError
from ..registry import MODELS
# importing the family modules registers their models
from . import mobilenetv1, mobilenetv2, resnet_bottleneck, resnet_cifar, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401
from . import timm_adapter, torchvision_adapter  # noqa: F401  (tv:*, timm:*: imported lazily when built)
from .contract import ContractModel, Features, FeatureShapes, declares_input_shape
from .hooked import HookedModel

__all__ = ["ContractModel", "Features", "FeatureShapes", "HookedModel", "build_model", "model_options"]

_COMMON = ("num_classes", "in_channels", "image_size")


def _register_timm(name: str) -> None:
    """``timm:<name>`` outside the registered list: register it now (timm checks the name when it builds)."""
    timm_adapter.register(name[len(timm_adapter.PREFIX):])


MODELS.add_resolver(timm_adapter.PREFIX, _register_timm)


def model_options(name: str) -> dict[str, Any]:
    """The extra keyword options a registered model accepts, with their defaults."""
    params = inspect.signature(MODELS.get(name).factory).parameters
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in params.values()
            if p.name not in _COMMON and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def build_model(name: str, num_classes: int = 100, in_channels: int = 3, image_size: int = 32,
                **kwargs: Any) -> ContractModel:
    """Build the registered model ``name`` for ``num_classes`` classes and ``in_channels`` x
    ``image_size`` x ``image_size`` inputs; ``kwargs`` are the model's own options (e.g. ``widths``)."""
    entry = MODELS.get(name)  # ConfigError with the closest name for unknown models
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model {name!r}: {key} must be a positive int, got {value!r}.")
    try:
        inspect.signature(entry.factory).bind(num_classes=num_classes, in_channels=in_channels,
                                              image_size=image_size, **kwargs)
    except TypeError:
        options = model_options(name)
        valid = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "none"
        unknown = sorted(set(kwargs) - set(options))
        raise ConfigError(f"model {name!r} got unknown option(s) {unknown}; its options are: {valid}.") from None
    model = entry.factory(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    if isinstance(model, ContractModel) and not declares_input_shape(model):  # feature_shapes() probes this input
        model.input_shape = (in_channels, image_size, image_size)
    return model
