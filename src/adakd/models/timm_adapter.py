"""timm's models as adakd models: ``timm:<name>`` (e.g. ``timm:mobilenetv3_small_050``, ``timm:convnext_atto``).

The model is ``timm.create_model(name, num_classes=..., in_chans=...)`` (timm is imported only when one
is built). Where timm's ``forward_features`` is a chain of blocks (ResNet, EfficientNet / MobileNetV2 /
MobileNetV3, ConvNeXt) it is wrapped by :class:`~adakd.models.hooked.ChainAdapter`: the whole
contract, ``run_units`` and ``blocks`` included (SAKD, ABL). Any other timm model (ViT, RegNet, ...)
is wrapped by :class:`~adakd.models.hooked.HookedModel` at the modules of timm's ``feature_info``
(at most 5, evenly spaced) and the classifier's input: every loss works, strategies that run
blocks one by one (sakd, abl) refuse it with one clear error.

Registered names: a list of common models (``adakd list models``); :func:`~adakd.models.build_model`
registers any other ``timm:<name>`` on first use. Weights: ``pretrained: true`` (timm's download from
the Hugging Face hub) or ``weights: /path/file.safetensors|.pth`` (a local file, read with
``weights_only=True``; its classifier is replaced when ``num_classes`` differs).

timm: Wightman, "PyTorch Image Models", https://github.com/huggingface/pytorch-image-models.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import MODELS
from .contract import ContractModel
from .hooked import ChainAdapter, HookedModel, even_stage_ends
from .torchvision_adapter import adapt_first_conv, flatten_stages, load_weight_file

PREFIX = "timm:"
PAPER = "Wightman, PyTorch Image Models (timm)"
#: registered without importing timm (any other timm name works too, registered on first use)
COMMON: dict[str, list[str]] = {
    "resnet": ["resnet10t", "resnet18", "resnet18d", "resnet26", "resnet34", "resnet50", "resnet50d"],
    "mobilenet_v2": ["mobilenetv2_050", "mobilenetv2_100"],
    "mobilenet_v3": ["mobilenetv3_small_050", "mobilenetv3_small_075", "mobilenetv3_small_100",
                     "mobilenetv3_large_075", "mobilenetv3_large_100"],
    "efficientnet": ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_lite0",
                     "tf_efficientnet_b0"],
    "convnext": ["convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny",
                 "convnext_small", "convnext_base"],
    "vit": ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "deit_tiny_patch16_224",
            "deit_small_patch16_224"],
    "regnet": ["regnetx_002", "regnety_002", "regnety_008"],
}
VIT_PREFIXES = ("vit_", "deit_", "deit3_")
_FAMILY_OF_CLASS = {"ResNet": "resnet", "EfficientNet": "efficientnet", "MobileNetV3": "mobilenet_v3",
                    "ConvNeXt": "convnext", "VisionTransformer": "vit", "RegNet": "regnet"}


def timm_module() -> Any:
    """``timm``, or a ConfigError saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ConfigError("the timm: models need timm (and a torchvision matching torch "
                          f"{torch.__version__}): pip install 'adakd[vision]'; in this repository use the vision "
                          "venv (constraints-vision.txt, docs/vision.md).") from None
    except RuntimeError as exc:  # timm imports torchvision: a mismatched build fails here
        raise ConfigError(f"timm could not be imported ({exc}); install the torchvision made for torch "
                          f"{torch.__version__} (constraints-vision.txt pins a working set).") from None
    return timm


class PreLogits(nn.Module):
    """timm's head up to the classifier: ``model.forward_head(h, pre_logits=True)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, h: Tensor) -> Tensor:
        return self.model.forward_head(h, pre_logits=True)


def timm_chain(model: nn.Module) -> dict[str, Any] | None:
    """``stem``, ``blocks`` of a timm model whose ``forward_features`` is a chain, else None."""
    kind = type(model).__name__
    if kind == "ResNet":
        stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
        blocks = [b for i in range(1, 5) for b in model.get_submodule(f"layer{i}")]
    elif kind in ("EfficientNet", "MobileNetV3"):
        stem = nn.Sequential(model.conv_stem, model.bn1)
        blocks = flatten_stages(model.blocks)
        if kind == "EfficientNet":  # its forward_features ends with the head conv
            blocks.append(nn.Sequential(model.conv_head, model.bn2))
    elif kind == "ConvNeXt":
        stem, blocks = model.stem, []
        for stage in model.stages:
            if not isinstance(stage.downsample, nn.Identity):
                blocks.append(stage.downsample)
            blocks.extend(stage.blocks)
        if not isinstance(model.norm_pre, nn.Identity):
            blocks.append(model.norm_pre)
    else:
        return None
    return dict(stem=stem, blocks=blocks)


def hooked_stage_paths(model: nn.Module) -> list[str]:
    """The modules of timm's ``feature_info``; at most 5 (the first, then evenly spaced, the last included)."""
    info = getattr(model, "feature_info", None)
    paths = [f["module"] for f in info] if isinstance(info, list) and info else []
    if not paths:
        raise ConfigError(f"timm model {type(model).__name__} has no feature_info to tap; use another model.")
    if len(paths) > 5:
        ends = even_stage_ends(len(paths) - 1)
        paths = [paths[i] for i in ends]
    return paths


def _offline(name: str, exc: BaseException) -> str:
    return (f"timm:{name} pretrained weights could not be fetched ({type(exc).__name__}: {str(exc)[:160]}); "
            "offline? Download the model's weight file (model.safetensors on huggingface.co/timm/<name>) where "
            "there is network and pass it: `weights: /path/model.safetensors` (student.kwargs / teacher.kwargs), "
            "or `teacher.checkpoint: /path/model.safetensors` for a teacher.")


def build_timm(name: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool = False,
               weights: str | None = None) -> ContractModel:
    """``timm.create_model(name, ...)`` for ``num_classes`` / ``in_channels`` / ``image_size``, wrapped."""
    timm = timm_module()
    if not timm.is_model(name):
        raise ConfigError(f"timm has no model {name!r}; see timm.list_models() (e.g. 'mobilenetv3_small_050').")
    size = {"img_size": image_size} if name.startswith(VIT_PREFIXES) else {}  # ViTs are built for one size
    state = load_weight_file(weights) if weights else None
    try:
        if state is not None:
            matrices = [v for v in state.values() if v.dim() == 2]  # the classifier's weight is the last matrix
            model = timm.create_model(name, num_classes=int(matrices[-1].shape[0]) if matrices else num_classes,
                                      **size)
            model.load_state_dict(state)
            if model.num_classes != num_classes:
                model.reset_classifier(num_classes)
            adapt_first_conv(model, in_channels, pretrained=True)
        else:
            model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels,
                                      **size)
    except RuntimeError as exc:
        if state is not None:
            raise ConfigError(f"weights file {weights} does not fit timm's {name}: {str(exc)[:240]}") from None
        raise ConfigError(_offline(name, exc)) from None
    except Exception as exc:  # huggingface_hub / network errors when pretrained and offline
        if pretrained:
            raise ConfigError(_offline(name, exc)) from None
        raise
    family = _FAMILY_OF_CLASS.get(type(model).__name__, type(model).__name__.lower())
    shape = (in_channels, image_size, image_size)
    chain = timm_chain(model)
    if chain is not None:
        return ChainAdapter(model, embed=PreLogits(model), classifier=model.get_classifier(), input_shape=shape,
                            family=family, **chain)
    classifier = model.get_classifier()
    path = next(n for n, m in model.named_modules() if m is classifier)
    return HookedModel(model, stage_paths=hooked_stage_paths(model), embed_path=None, classifier_path=path,
                       input_shape=shape, family=family)


def builder(name: str) -> Callable[..., ContractModel]:
    def build(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, pretrained: bool = False,
              weights: str | None = None) -> ContractModel:
        return build_timm(name, num_classes, in_channels, image_size, pretrained, weights)
    return build


def register(name: str, family: str = "") -> None:
    """Register ``timm:<name>`` (no import of timm)."""
    MODELS.register(f"{PREFIX}{name}", description=f"timm {name}{f' ({family})' if family else ''}; needs timm",
                    paper=PAPER, family=family)(builder(name))


for _family, _names in COMMON.items():
    for _name in _names:
        register(_name, _family)
