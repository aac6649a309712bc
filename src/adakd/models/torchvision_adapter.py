"""torchvision's classification models as adakd models: ``tv:<name>`` (e.g. ``tv:resnet50``, ``tv:mobilenet_v3_small``).

Families: resnet (+ resnext, wide_resnet), mobilenet_v2, mobilenet_v3, efficientnet (v1, v2), convnext,
regnet, vit. torchvision is imported only when one of them is built, so ``adakd list models`` works
without it; it needs a torchvision built for the installed torch (``pip install 'adakd[vision]'``;
in this repository a separate venv, see ``constraints-vision.txt`` and ``docs/vision.md``).
``tv_resnet18/34/50`` are kept as aliases of ``tv:resnet18/34/50``.

Each model is wrapped by :class:`~adakd.models.hooked.ChainAdapter`: torchvision's forward is a chain
(stem, blocks, pooling, classifier), so the adapter gives the whole feature contract: stage outputs
(stem first, then the last block of each resolution), the pooled embedding (the classifier's input),
``run_units``/``blocks`` (SAKD, ABL). ViT's stages are token sequences ``[N+1, D]`` (4 equal groups of
encoder blocks), so methods that need conv maps (at, fitnet, ...) refuse it with one clear error.

Weights: ``weights: IMAGENET1K_V1`` (a torchvision weight name; downloaded or read from torch's hub
cache), ``weights: /path/resnet34-b627a593.pth`` (a torchvision weight file, read with
``weights_only=True``), or ``pretrained: true`` (the default weights). The state dict uses
torchvision's key names, so a torchvision weight file is also a valid ``teacher.checkpoint``.
``in_channels != 3`` replaces the first convolution (pretrained RGB kernels are summed for 1 channel,
exact for a grey image repeated on R, G, B); ``num_classes`` different from the weights' replaces the
last linear layer (new, untrained).

torchvision: Marcel & Rodriguez, "Torchvision: the machine-vision package of Torch", ACM MM 2010.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import MODELS
from .hooked import ChainAdapter, even_stage_ends

PREFIX = "tv:"
#: family -> torchvision builder names (classification models of torchvision 0.29)
FAMILIES: dict[str, list[str]] = {
    "resnet": ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"],
    "mobilenet_v2": ["mobilenet_v2"],
    "mobilenet_v3": ["mobilenet_v3_small", "mobilenet_v3_large"],
    "efficientnet": [f"efficientnet_b{i}" for i in range(8)] + ["efficientnet_v2_s", "efficientnet_v2_m",
                                                                   "efficientnet_v2_l"],
    "convnext": ["convnext_tiny", "convnext_small", "convnext_base", "convnext_large"],
    "regnet": [f"regnet_{k}_{s}" for k in ("x", "y") for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf",
                                                               "32gf")] + ["regnet_y_128gf"],
    "vit": ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"],
}
PAPERS = {
    "resnet": "He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
    "mobilenet_v2": "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018",
    "mobilenet_v3": "Howard et al., Searching for MobileNetV3, ICCV 2019",
    "efficientnet": "Tan & Le, EfficientNet (ICML 2019) / EfficientNetV2 (ICML 2021)",
    "convnext": "Liu et al., A ConvNet for the 2020s, CVPR 2022",
    "regnet": "Radosavovic et al., Designing Network Design Spaces, CVPR 2020",
    "vit": "Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021",
}
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def torchvision_models() -> Any:
    """``torchvision.models``, or a ConfigError saying how to install it."""
    try:
        import torchvision.models as tvm
    except ImportError:
        raise ConfigError(
            f"the tv: models need torchvision (a build matching torch {torch.__version__}): "
            "pip install 'adakd[vision]'; in this repository use the vision venv: python -m venv .venv-vision && "
            ".venv-vision/bin/pip install -c constraints-vision.txt -e '.[dev,vision]' (docs/vision.md). "
            "Without it, use the zoo's models (adakd list models).") from None
    except RuntimeError as exc:  # a torchvision built for another torch: "operator torchvision::nms does not exist"
        raise ConfigError(f"torchvision is installed but does not match torch {torch.__version__} ({exc}); "
                          "install the torchvision release made for this torch (constraints-vision.txt "
                          "pins a working pair: torch 2.14.1 + torchvision 0.29.1).") from None
    return tvm


# --------------------------------------------------------------------------- weights

def is_weight_file(weights: str) -> bool:
    return Path(weights).expanduser().exists() or weights.endswith(WEIGHT_SUFFIXES) or "/" in weights


def load_weight_file(path: str) -> dict[str, Tensor]:
    """A state dict from a local weight file (``.safetensors``, or a PyTorch file read with ``weights_only=True``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"weights file {file} does not exist; give the path of a downloaded weight file.")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(file))
        else:
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code, a truncated file, not a weight file
        raise ConfigError(f"weights file {file} could not be read as tensors ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); adakd reads state dicts only "
                          "(weights_only=True).") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(f"weights file {file} does not hold a state dict of tensors.")
    return obj


def last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier: the last ``nn.Linear`` in module order (torchvision's and timm's heads end with it)."""
    found = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError(f"{type(net).__name__} has no linear classifier to resize.")
    return found[-1]


def replace_module(net: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, name, new)


def resize_classifier(net: nn.Module, num_classes: int) -> None:
    """A new (untrained) last linear layer when the weights' class count is not ``num_classes``."""
    path, fc = last_linear(net)
    if fc.out_features != num_classes:
        replace_module(net, path, nn.Linear(fc.in_features, num_classes, bias=fc.bias is not None))


def adapt_first_conv(net: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Replace the first conv for ``in_channels`` inputs: pretrained RGB kernels summed for 1 channel, else new."""
    path, old = next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
    if old is None or old.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                    padding=old.padding, dilation=old.dilation, groups=1, bias=old.bias is not None)
    if pretrained and in_channels == 1:
        with torch.no_grad():
            new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
            if old.bias is not None:
                new.bias.copy_(old.bias)
    else:
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if new.bias is not None:
            nn.init.zeros_(new.bias)
    replace_module(net, path, new)


def _offline_message(arch: str, weights: str, exc: BaseException, tvm: Any) -> str:
    url = ""
    try:
        url = tvm.get_model_weights(arch)[weights if weights != "DEFAULT" else "DEFAULT"].url
    except Exception:  # an older torchvision or an unknown weight name: say it without the URL
        pass
    where = f"download {url}" if url else f"download torchvision's {arch} {weights} weight file"
    return (f"tv:{arch} weights {weights!r} could not be fetched ({type(exc).__name__}: {str(exc)[:120]}); "
            f"offline? {where} where there is network and pass the file: `weights: /path/to/file.pth` "
            f"(student.kwargs / teacher.kwargs), or `teacher.checkpoint: /path/to/file.pth` for a teacher "
            f"(or put it in {torch.hub.get_dir()}/checkpoints/).")


# --------------------------------------------------------------------------- the chain of each family

class _ViTStem(nn.Module):
    """torchvision ViT up to the encoder's blocks: patchify, class token, position embedding, dropout."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_proj(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.class_token.expand(h.shape[0], -1, -1), h], dim=1)
        return self.dropout(h + self.pos_embedding)


class ClassToken(nn.Module):
    """``h[:, 0]``: the class token of a token sequence."""

    def forward(self, h: Tensor) -> Tensor:
        return h[:, 0]


def flatten_stages(seq: nn.Module) -> list[nn.Module]:
    """Children of ``seq``; a plain ``nn.Sequential`` child made only of composite modules (a stage of
    blocks) is expanded into its blocks, anything else (stem, downsampling layer, head conv) stays one unit."""
    units: list[nn.Module] = []
    for child in seq.children():
        grand = list(child.children())
        if type(child) is nn.Sequential and grand and all(list(g.children()) for g in grand):
            units.extend(grand)
        else:
            units.append(child)
    return units


def split_torchvision(family: str, net: nn.Module) -> dict[str, Any]:
    """``stem``, ``blocks``, ``embed``, ``classifier`` (and ``stage_ends`` where not by resolution)."""
    pool = getattr(net, "avgpool", None) or nn.AdaptiveAvgPool2d(1)
    if family == "resnet":
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        blocks = [b for i in range(1, 5) for b in net.get_submodule(f"layer{i}")]
        return dict(stem=stem, blocks=blocks, embed=pool, classifier=net.fc)
    if family == "regnet":
        blocks = [b for stage in net.trunk_output for b in stage]
        return dict(stem=net.stem, blocks=blocks, embed=pool, classifier=net.fc)
    if family == "vit":
        blocks = list(net.encoder.layers)
        return dict(stem=_ViTStem(net), blocks=blocks, embed=nn.Sequential(net.encoder.ln, ClassToken()),
                    classifier=net.heads, stage_ends=even_stage_ends(len(blocks)))
    units = flatten_stages(net.features)  # mobilenet_v2/v3, efficientnet, convnext
    if family == "convnext":  # classifier = LayerNorm2d, Flatten, Linear
        return dict(stem=units[0], blocks=units[1:], embed=nn.Sequential(pool, net.classifier[0]),
                    classifier=net.classifier[2])
    return dict(stem=units[0], blocks=units[1:], embed=pool, classifier=net.classifier)


def build_torchvision(arch: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool = False,
                      weights: str | None = None, **options: Any) -> ChainAdapter:
    """``torchvision.models.<arch>`` for ``num_classes`` classes and ``in_channels`` x ``image_size``² inputs,
    wrapped with the feature contract; ``weights`` a torchvision weight name or a local file (see module doc)."""
    family = next((f for f, names in FAMILIES.items() if arch in names), None)
    if family is None:
        raise ConfigError(f"tv:{arch} is not one of the supported torchvision families {', '.join(FAMILIES)}.")
    tvm = torchvision_models()
    factory = getattr(tvm, arch, None)
    if factory is None:
        raise ConfigError(f"this torchvision has no model {arch!r}; upgrade torchvision.")
    if pretrained and not weights:
        weights = "DEFAULT"
    from_file = bool(weights) and is_weight_file(weights)
    if family == "vit" and (from_file or not weights):  # torchvision's named ViT weights are for 224 only
        options["image_size"] = image_size
    if from_file:
        state = load_weight_file(weights)
        matrices = [v for v in state.values() if v.dim() == 2]  # the classifier's weight is the last matrix
        net = factory(num_classes=int(matrices[-1].shape[0]) if matrices else num_classes, **options)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(f"weights file {weights} does not fit torchvision's {arch}: "
                              f"{str(exc).splitlines()[1].strip()[:200] if len(str(exc).splitlines()) > 1 else exc}"
                              ". Check the model name against the file.") from None
    elif weights:
        try:
            net = factory(weights=weights, **options)
        except (OSError, RuntimeError) as exc:  # no network (URLError is an OSError), a failed download
            raise ConfigError(_offline_message(arch, weights, exc, tvm)) from None
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"tv:{arch}: {weights!r} is neither a weight file nor a torchvision weight name "
                              f"({exc}).") from None
    else:
        net = factory(num_classes=num_classes, **options)
    resize_classifier(net, num_classes)
    adapt_first_conv(net, in_channels, pretrained=bool(weights))
    adapter = ChainAdapter(net, input_shape=(in_channels, image_size, image_size), family=family,
                           **split_torchvision(family, net))
    adapter.native_format = "torchvision"  # its state dict is torchvision's (models/foreign.py)
    return adapter


# --------------------------------------------------------------------------- the registry

def _builder(arch: str, family: str) -> Callable[..., ChainAdapter]:
    if family == "resnet":
        def build_resnet(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, pretrained: bool = False,
                         weights: str | None = None, zero_init_residual: bool = False) -> ChainAdapter:
            return build_torchvision(arch, num_classes, in_channels, image_size, pretrained, weights,
                                     zero_init_residual=zero_init_residual)
        return build_resnet

    def build(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, pretrained: bool = False,
              weights: str | None = None) -> ChainAdapter:
        return build_torchvision(arch, num_classes, in_channels, image_size, pretrained, weights)
    return build


def register_all() -> None:
    for family, names in FAMILIES.items():
        for arch in names:
            MODELS.register(f"{PREFIX}{arch}", description=f"torchvision {arch} ({family}); needs torchvision",
                            paper=PAPERS[family], family=family)(_builder(arch, family))
    for depth in (18, 34, 50):  # the names of earlier versions
        MODELS.register(f"tv_resnet{depth}", description=f"alias of tv:resnet{depth}; needs torchvision",
                        paper=PAPERS["resnet"], family="resnet")(_builder(f"resnet{depth}", "resnet"))


register_all()
