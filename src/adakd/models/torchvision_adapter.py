"""torchvision's ImageNet ResNets as adakd models: ``tv_resnet18``, ``tv_resnet34``, ``tv_resnet50``.

torchvision is an optional extra (``pip install 'adakd[vision]'``, a build matching your torch); it is
imported only when one of these models is built, so ``adakd list models`` works without it.

The torchvision module is wrapped with :class:`~adakd.models.hooked.HookedModel`: stage 0 (the
stem) is the output of ``maxpool``, stages 1-4 the outputs of ``layer1`` .. ``layer4``, the pooled
embedding is the input of the classifier ``fc``. Because torchvision's ResNet forward is the plain
chain ``conv1 bn1 relu maxpool layer1..layer4 avgpool flatten fc``, the wrapper also gives the
rest of the feature contract that a generic HookedModel cannot: ``units`` = [stem, every residual
block in order], ``run_units``, ``head``, ``blocks`` (so ABL and SAKD work with these models).

State dicts use torchvision's own key names (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...):
a student checkpoint loads into a plain torchvision model, and a torchvision weight file (e.g.
``resnet34-b627a593.pth``) can be given directly as ``teacher.checkpoint``.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016; torchvision
(Marcel & Rodriguez, "Torchvision: the machine-vision package of Torch", ACM MM 2010).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import MODELS
from .contract import ContractModel
from .hooked import HookedModel

PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016 (torchvision's implementation)"
STAGE_PATHS = ["maxpool", "layer1", "layer2", "layer3", "layer4"]
_PREFIX = "module."


def torchvision_models() -> Any:
    """``torchvision.models``, or a ConfigError saying how to install it."""
    try:
        import torchvision.models as tvm
    except ImportError:
        raise ConfigError(
            "the tv_* models need torchvision (a build matching torch "
            f"{torch.__version__}): pip install 'adakd[vision]'. Without it, use the zoo's models "
            "(adakd list models), e.g. MobileNetV1 or ResNet50.") from None
    except RuntimeError as exc:  # a torchvision built for another torch: "operator torchvision::nms does not exist"
        raise ConfigError(f"torchvision is installed but does not match torch {torch.__version__} ({exc}); "
                          "install the torchvision release made for this torch.") from None
    return tvm


def _strip_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: ``<prefix>module.X`` -> ``<prefix>X`` (torchvision's names)."""
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


class TorchvisionResNet(HookedModel):
    """A torchvision ``ResNet`` with the full feature contract (see the module docstring)."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, int, int]) -> None:
        super().__init__(module, stage_paths=STAGE_PATHS, embed_path=None, classifier_path="fc",
                         input_shape=input_shape, family="resnet")
        stem = nn.Sequential(module.conv1, module.bn1, module.relu, module.maxpool)
        layers = [module.get_submodule(f"layer{i}") for i in range(1, 5)]
        blocks = [block for layer in layers for block in layer]
        # not registered as a child: the units share the wrapped module's parameters, saved once under its names
        object.__setattr__(self, "units", nn.ModuleList([stem, *blocks]))
        ends, count = [0], 0
        for layer in layers:
            count += len(layer)
            ends.append(count)
        self.stage_ends = ends
        self.register_state_dict_post_hook(_strip_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    def embed(self, h: Tensor) -> Tensor:
        return torch.flatten(self.module.avgpool(h), 1)

    def head(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return ContractModel.head(self, h)

    def run_units(self, h: Tensor, start: int, end: int | None = None) -> Tensor:
        return ContractModel.run_units(self, h, start, end)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.units)[1:]

    def stage_unit_range(self, k: int) -> tuple[int, int]:
        return ContractModel.stage_unit_range(self, k)


def build_torchvision_resnet(arch: str, num_classes: int, in_channels: int, image_size: int,
                             weights: str | None = None, zero_init_residual: bool = False) -> TorchvisionResNet:
    """``torchvision.models.<arch>`` for ``num_classes`` classes and ``in_channels`` inputs, wrapped.

    ``weights`` is a torchvision weight name (e.g. ``"IMAGENET1K_V1"``; torchvision downloads it, or reads
    its cache); with weights and ``num_classes != 1000`` the classifier is replaced (new, untrained).
    ``in_channels != 3`` replaces ``conv1`` by a new 7x7 stride-2 conv.
    """
    tvm = torchvision_models()
    factory = getattr(tvm, arch, None)
    if factory is None:
        raise ConfigError(f"this torchvision has no model {arch!r}; upgrade torchvision.")
    if weights:
        net = factory(weights=weights, zero_init_residual=zero_init_residual)
        if net.fc.out_features != num_classes:
            net.fc = nn.Linear(net.fc.in_features, num_classes)
    else:
        net = factory(num_classes=num_classes, zero_init_residual=zero_init_residual)
    if in_channels != net.conv1.in_channels:
        old = net.conv1
        net.conv1 = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                              padding=old.padding, bias=old.bias is not None)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return TorchvisionResNet(net, input_shape=(in_channels, image_size, image_size))


@MODELS.register("tv_resnet18", description="torchvision ResNet-18 (ImageNet layout, 11.7M params at 1000 classes); "
                 "needs torchvision", paper=PAPER)
def tv_resnet18(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, weights: str | None = None,
                zero_init_residual: bool = False) -> TorchvisionResNet:
    return build_torchvision_resnet("resnet18", num_classes, in_channels, image_size, weights, zero_init_residual)


@MODELS.register("tv_resnet34", description="torchvision ResNet-34 (ImageNet layout, 21.8M params at 1000 classes); "
                 "needs torchvision", paper=PAPER)
def tv_resnet34(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, weights: str | None = None,
                zero_init_residual: bool = False) -> TorchvisionResNet:
    return build_torchvision_resnet("resnet34", num_classes, in_channels, image_size, weights, zero_init_residual)


@MODELS.register("tv_resnet50", description="torchvision ResNet-50 (ImageNet layout, bottleneck, 25.6M params at "
                 "1000 classes); needs torchvision", paper=PAPER)
def tv_resnet50(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, weights: str | None = None,
                zero_init_residual: bool = False) -> TorchvisionResNet:
    return build_torchvision_resnet("resnet50", num_classes, in_channels, image_size, weights, zero_init_residual)
