"""The model zoo and the hook adapter.

Parameter counts are re-derived here from closed-form per-layer counts of the reference
architectures (RepDistiller models/*.py, written from the papers' layer tables), never from the
code under test; the six published sizes of reference.md anchor the closed forms.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adakd.errors import ConfigError, ShapeError
from adakd.models import ContractModel, HookedModel, build_model
from adakd.registry import MODELS

ZOO = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
       "resnet32x4", "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13",
       "vgg16", "vgg19", "MobileNetV2", "MobileNetV1", "ShuffleV1", "ShuffleV2", "ResNet18",
       "mobilenetv2_tinyimagenet"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- closed-form parameter counts -------------------------------------------------------------

def conv(k: int, cin: int, cout: int, groups: int = 1, bias: bool = False) -> int:
    return k * k * (cin // groups) * cout + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def linear(i: int, o: int) -> int:
    return i * o + o


def count_cifar_resnet(depth: int, widths: tuple[int, int, int, int], cin: int = 3, classes: int = 100) -> int:
    n = (depth - 2) // 6
    total = conv(3, cin, widths[0]) + bn(widths[0])
    inp = widths[0]
    for s, w in enumerate(widths[1:]):
        for i in range(n):
            total += conv(3, inp, w) + bn(w) + conv(3, w, w) + bn(w)
            if (s > 0 and i == 0) or inp != w:
                total += conv(1, inp, w) + bn(w)
            inp = w
    return total + linear(inp, classes)


def count_wrn(depth: int, k: int, cin: int = 3, classes: int = 100) -> int:
    n = (depth - 4) // 6
    total, inp = conv(3, cin, 16), 16
    for w in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += bn(inp) + conv(3, inp, w) + bn(w) + conv(3, w, w) + (conv(1, inp, w) if inp != w else 0)
            inp = w
    return total + bn(inp) + linear(inp, classes)


VGG_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def count_vgg(cfg: list[list[int]], cin: int = 3, classes: int = 100) -> int:
    total = 0
    for group in cfg:
        for w in group:
            total += conv(3, cin, w, bias=True) + bn(w)
            cin = w
    return total + linear(512, classes)


def count_resnet50(cin: int = 3, classes: int = 100) -> int:
    total, inp = conv(3, cin, 64) + bn(64), 64
    for planes, n in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for i in range(n):
            total += conv(1, inp, planes) + bn(planes) + conv(3, planes, planes) + bn(planes)
            total += conv(1, planes, 4 * planes) + bn(4 * planes)
            if i == 0:
                total += conv(1, inp, 4 * planes) + bn(4 * planes)
            inp = 4 * planes
    return total + linear(2048, classes)


def count_resnet18(cin: int = 3, classes: int = 100) -> int:
    # mdistiller's resnetv2.ResNet18: basic blocks 2/2/2/2, a 1x1 conv-BN shortcut where the shape changes
    total, inp = conv(3, cin, 64) + bn(64), 64
    for planes in (64, 128, 256, 512):
        for i in range(2):
            total += conv(3, inp, planes) + bn(planes) + conv(3, planes, planes) + bn(planes)
            if inp != planes:
                total += conv(1, inp, planes) + bn(planes)
            inp = planes
    return total + linear(512, classes)


def count_mobilenetv2_tiny(cin: int = 3, classes: int = 100) -> int:
    # mdistiller's mv2_tinyimagenet.py: width 1.0, every conv biased, 1x1 conv classifier
    total, inp = conv(1, cin, 32, bias=True) + bn(32), 32
    for t, c, n in [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]:
        for _ in range(n):
            h = inp * t
            total += conv(1, inp, h, bias=True) + bn(h) + conv(3, h, h, groups=h, bias=True) + bn(h)
            total += conv(1, h, c, bias=True) + bn(c)
            inp = c
    return total + conv(1, 320, 1280, bias=True) + bn(1280) + conv(1, 1280, classes, bias=True)


def count_mobilenetv2(cin: int = 3, classes: int = 100) -> int:
    # width 0.5: channels halved; (t, c, n) per group; expansion conv kept at t = 1
    total, inp = conv(3, cin, 16) + bn(16), 16
    for t, c, n in [(1, 8, 1), (6, 12, 2), (6, 16, 3), (6, 32, 4), (6, 48, 3), (6, 80, 3), (6, 160, 1)]:
        for _ in range(n):
            h = inp * t
            total += conv(1, inp, h) + bn(h) + conv(3, h, h, groups=h) + bn(h) + conv(1, h, c) + bn(c)
            inp = c
    return total + conv(1, 160, 1280) + bn(1280) + linear(1280, classes)


def count_mobilenetv1(cin: int = 3, classes: int = 100) -> int:
    total, inp = conv(3, cin, 32) + bn(32), 32
    for out in [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]:
        total += conv(3, inp, inp, groups=inp) + bn(inp) + conv(1, inp, out) + bn(out)
        inp = out
    return total + linear(1024, classes)


def count_shufflev1(cin: int = 3, classes: int = 100) -> int:
    total, inp = conv(1, cin, 24) + bn(24), 24
    for out, n in ((240, 4), (480, 8), (960, 4)):
        for i in range(n):
            branch = out - inp if i == 0 else out
            mid, g1 = branch // 4, (1 if inp == 24 else 3)
            total += conv(1, inp, mid, groups=g1) + bn(mid) + conv(3, mid, mid, groups=mid) + bn(mid)
            total += conv(1, mid, branch, groups=3) + bn(branch)
            inp = out
    return total + linear(960, classes)


def count_shufflev2(cin: int = 3, classes: int = 100) -> int:
    total, inp = conv(1, cin, 24) + bn(24), 24
    for out, n in ((116, 3), (232, 7), (464, 3)):
        m = out // 2
        total += conv(3, inp, inp, groups=inp) + bn(inp) + conv(1, inp, m) + bn(m)  # left
        total += conv(1, inp, m) + bn(m) + conv(3, m, m, groups=m) + bn(m) + conv(1, m, m) + bn(m)  # right
        total += n * (conv(1, m, m) + bn(m) + conv(3, m, m, groups=m) + bn(m) + conv(1, m, m) + bn(m))
        inp = out
    return total + conv(1, 464, 1024) + bn(1024) + linear(1024, classes)


def closed_form(name: str, cin: int = 3, classes: int = 100) -> int:
    small, x4 = (16, 16, 32, 64), (32, 64, 128, 256)
    if name.startswith("resnet"):
        depth = int(name[6:].replace("x4", ""))
        return count_cifar_resnet(depth, x4 if name.endswith("x4") else small, cin, classes)
    if name.startswith("wrn_"):
        _, depth, k = name.split("_")
        return count_wrn(int(depth), int(k), cin, classes)
    if name.startswith("vgg"):
        return count_vgg(VGG_CFG[name], cin, classes)
    return {"ResNet50": count_resnet50, "MobileNetV2": count_mobilenetv2, "MobileNetV1": count_mobilenetv1,
            "ShuffleV1": count_shufflev1, "ShuffleV2": count_shufflev2, "ResNet18": count_resnet18,
            "mobilenetv2_tinyimagenet": count_mobilenetv2_tiny}[name](cin, classes)


#: published sizes (reference.md / the CRD paper's code) and, for the rest, the closed forms above
#: (they agree with the commonly quoted sizes: vgg8 3.96M, vgg13 9.46M, MobileNetV2 0.81M,
#: ShuffleV1 0.95M, ShuffleV2 1.36M, ResNet50 23.71M, MobileNetV1 4.23M at 1000 classes)
PUBLISHED = {"resnet8x4": 1_233_540, "resnet32x4": 7_433_860, "resnet56": 861_620, "resnet20": 278_324,
             "wrn_40_2": 2_255_156, "wrn_16_2": 703_284}
EXPECTED_COUNTS = {
    **PUBLISHED, "resnet8": 83_892, "resnet14": 181_108, "resnet32": 472_756, "resnet44": 667_188,
    "resnet110": 1_736_564, "ResNet50": 23_705_252, "wrn_16_1": 180_916, "wrn_40_1": 569_780,
    "vgg8": 3_965_028, "vgg11": 9_277_284, "vgg13": 9_462_180, "vgg16": 14_774_436, "vgg19": 20_086_692,
    "MobileNetV2": 812_836, "MobileNetV1": 3_309_476, "ShuffleV1": 949_258, "ShuffleV2": 1_355_528,
    "ResNet18": 11_220_132, "mobilenetv2_tinyimagenet": 2_369_380,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_closed_forms_reproduce_the_published_sizes():
    for name, count in PUBLISHED.items():
        assert closed_form(name) == count, name
    assert count_mobilenetv1(classes=1000) == 4_231_976  # MobileNet-224 1.0x of the MobileNets paper (4.2M)
    # torchvision's ResNet-50 (25,557,032 at 1000 classes) differs only by its 7x7 stem conv
    assert count_resnet50(classes=1000) - conv(3, 3, 64) + conv(7, 3, 64) == 25_557_032


def test_every_zoo_name_is_registered():
    assert set(ZOO) <= set(MODELS.names())
    for name in ZOO:
        entry = MODELS.get(name)
        assert entry.description and entry.paper


def test_parameter_counts():
    with torch.device("meta"):  # counting needs no memory and no initialisation
        for name in ZOO:
            assert n_params(build_model(name, num_classes=100)) == closed_form(name) == EXPECTED_COUNTS[name], name
            grey = build_model(name, num_classes=10, in_channels=1, image_size=28)
            assert n_params(grey) == closed_form(name, cin=1, classes=10), name


# -- the contract, model by model ------------------------------------------------------------------

#: stages whose last unit ends with a ReLU (their pre-activation output differs from the output)
RELU_STAGES = {"wrn": [1, 2, 3], "MobileNetV2": [0], "mobilenetv2_tinyimagenet": [0, 4]}
#: stages ending with ReLU6 instead of ReLU
RELU6 = {"mobilenetv2_tinyimagenet"}


def relu_stages(name: str, num_stage_outputs: int) -> list[int]:
    if name.startswith("wrn"):
        return RELU_STAGES["wrn"]  # the stem is a bare conv
    return RELU_STAGES.get(name, list(range(num_stage_outputs)))


@pytest.mark.parametrize("name", ZOO)
def test_contract_at_32x32(name):
    model = build_model(name, num_classes=100).eval()
    assert isinstance(model, ContractModel)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        # units one by one, stage by stage, + head == forward, exactly
        h = x
        for k in range(len(model.stage_ends)):
            start, end = model.stage_unit_range(k)
            for unit in list(model.units)[start:end]:
                h = unit(h)
        pooled, logits_units = model.head(h)
        assert torch.equal(model.run_units(model.run_units(x, 0, 2), 2), h)
        f = model.forward_features(x)
    assert logits.shape == (2, 100)
    assert torch.equal(logits_units, logits)
    assert torch.equal(f.logits, logits) and torch.equal(f.pooled, pooled)
    # stages: stem first, one per stage end, the last one feeds the head
    assert model.stage_ends[0] == 0 and model.stage_ends[-1] == len(model.units) - 1
    assert model.stage_ends == sorted(set(model.stage_ends))
    assert len(f.stages) == len(f.preact_stages) == len(model.stage_ends) == model.num_stages + 1
    assert torch.equal(model.head(f.stages[-1])[1], logits)
    assert len(model.blocks) == len(model.units) - 1
    differs = []
    for k, (stage, pre) in enumerate(zip(f.stages, f.preact_stages)):
        assert stage.shape == pre.shape
        if not torch.equal(stage, pre):
            differs.append(k)
            # a ReLU ends the stage: preact keeps its negative part (no in-place op overwrote it)
            act = F.relu6 if name in RELU6 else F.relu
            assert (pre < 0).any() and torch.equal(stage, act(pre)), k
    assert differs == relu_stages(name, len(f.stages))
    # preact_bns: one per stage output, each a BatchNorm of the model with the stage's channels
    bns = model.preact_bns()
    assert len(bns) == len(f.stages)
    for bn_, stage in zip(bns, f.stages):
        if bn_ is not None:
            assert isinstance(bn_, nn.BatchNorm2d) and bn_.num_features == stage.shape[1]
            assert any(bn_ is m for m in model.modules())
    if model.family in ("resnet", "wrn", "vgg"):  # the usual OFD teachers have one after every stage
        assert all(b is not None for b in bns[1:])


@pytest.mark.parametrize("name", ["vgg13", "wrn_40_1", "MobileNetV1"])
def test_preact_is_exactly_the_preact_bn_output(name):
    # where no residual is added after the BN, the pre-activation stage output is that BN's output
    model = build_model(name).eval()
    seen: dict[int, torch.Tensor] = {}
    handles = [b.register_forward_hook(lambda m, a, out, k=k: seen.__setitem__(k, out.clone()))
               for k, b in enumerate(model.preact_bns()) if b is not None]
    with torch.no_grad():
        f = model.forward_features(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert seen
    for k, out in seen.items():
        assert torch.equal(out, f.preact_stages[k])


EXPECTED_STAGES_28 = {
    "resnet8": [(16, 28, 28), (16, 28, 28), (32, 14, 14), (64, 7, 7)],
    "resnet8x4": [(32, 28, 28), (64, 28, 28), (128, 14, 14), (256, 7, 7)],
    "wrn_16_2": [(16, 28, 28), (32, 28, 28), (64, 14, 14), (128, 7, 7)],
    "vgg8": [(64, 28, 28), (128, 14, 14), (256, 7, 7), (512, 3, 3), (512, 3, 3)],
    "MobileNetV2": [(16, 14, 14), (12, 14, 14), (16, 7, 7), (48, 4, 4), (160, 2, 2)],
    "MobileNetV1": [(32, 14, 14), (128, 7, 7), (256, 4, 4), (512, 2, 2), (1024, 1, 1)],
    "ShuffleV1": [(24, 28, 28), (240, 14, 14), (480, 7, 7), (960, 4, 4)],
    "ShuffleV2": [(24, 28, 28), (116, 14, 14), (232, 7, 7), (464, 4, 4)],
}
EXPECTED_STAGES_32 = {
    "resnet20": [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)],
    "resnet32x4": [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)],
    "ResNet50": [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)],
    "wrn_40_2": [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)],
    "vgg13": [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)],
    "MobileNetV2": [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)],
    "ShuffleV1": [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)],
    "ShuffleV2": [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4)],
}
POOLED = {"MobileNetV2": 1280, "MobileNetV1": 1024, "ShuffleV1": 960, "ShuffleV2": 1024, "ResNet50": 2048}


@pytest.mark.parametrize("name", ZOO)
def test_grey_28x28_any_class_count_batch_one(name):
    model = build_model(name, num_classes=7, in_channels=1, image_size=28).eval()
    assert model.input_shape == (1, 28, 28)
    with torch.no_grad():
        f = model.forward_features(torch.randn(1, 1, 28, 28))
    assert f.logits.shape == (1, 7)
    shapes = model.feature_shapes()
    assert shapes.num_classes == 7 and shapes.stages == [tuple(s.shape[1:]) for s in f.stages]
    assert shapes.pooled == f.pooled.shape[1] == model.fc.in_features
    assert shapes.family == model.family != ""
    if name in EXPECTED_STAGES_28:
        assert shapes.stages == EXPECTED_STAGES_28[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_STAGES_32))
def test_stage_shapes_at_32x32(name):
    shapes = build_model(name, num_classes=100).feature_shapes()
    assert shapes.stages == EXPECTED_STAGES_32[name]
    assert shapes.pooled == POOLED.get(name, EXPECTED_STAGES_32[name][-1][0])


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "MobileNetV1", "ShuffleV1",
                                  "ShuffleV2"])
def test_64x64_inputs(name):
    model = build_model(name, num_classes=200, image_size=64).eval()
    with torch.no_grad():
        f = model.forward_features(torch.randn(1, 3, 64, 64))
    assert f.logits.shape == (1, 200)
    sizes = [s.shape[-1] for s in f.stages]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] >= 32


def test_vgg_pools_before_the_last_group_only_at_64_pixels():
    assert build_model("vgg8", image_size=64).feature_shapes().stages[-2:] == [(512, 8, 8), (512, 4, 4)]
    assert build_model("vgg8", image_size=32).feature_shapes().stages[-2:] == [(512, 4, 4), (512, 4, 4)]
    with pytest.raises(ShapeError, match="at least 8 pixels"):
        build_model("vgg8", image_size=4)


@pytest.mark.parametrize("num_classes", [1, 2, 1000])
def test_any_class_count(num_classes):
    model = build_model("resnet8", num_classes=num_classes).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 3, 32, 32)).shape == (3, num_classes)


@pytest.mark.parametrize("name", ["resnet8", "ResNet50", "wrn_16_1", "vgg8", "MobileNetV2", "MobileNetV1",
                                  "ShuffleV1", "ShuffleV2"])
def test_gradients_reach_every_parameter(name):
    model = build_model(name, num_classes=5, in_channels=1, image_size=16).train()
    x = torch.randn(3, 1, 16, 16, requires_grad=True)
    f = model.forward_features(x)
    loss = F.cross_entropy(f.logits, torch.tensor([0, 1, 2]))
    loss = loss + sum(p.pow(2).mean() for p in f.preact_stages) + f.pooled.pow(2).mean()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_block_counts_for_abl():
    # methods.md: ResNet20 has 9 blocks, ResNet8x4 has 3
    assert len(build_model("resnet20").blocks) == 9
    assert len(build_model("resnet8x4").blocks) == 3
    assert len(build_model("MobileNetV2").blocks) == 17
    assert len(build_model("ShuffleV2").blocks) == 16
    assert len(build_model("vgg13").blocks) == 8  # group 0 is the stem, then one unit per conv


# -- build_model ---------------------------------------------------------------------------------------

def test_resnet_widths_override():
    model = build_model("resnet20", num_classes=10, in_channels=1, image_size=28, widths=(32, 64, 128))
    assert [s[0] for s in model.feature_shapes().stages] == [32, 32, 64, 128]
    assert n_params(model) == count_cifar_resnet(20, (32, 32, 64, 128), cin=1, classes=10)
    four = build_model("resnet8", widths=[8, 16, 32, 64])
    assert [s[0] for s in four.feature_shapes().stages] == [8, 16, 32, 64]
    with pytest.raises(ConfigError, match="widths"):
        build_model("resnet8", widths=(16, 32))


def test_build_model_errors():
    with pytest.raises(ConfigError, match="resnet20"):
        build_model("resnet200")
    with pytest.raises(ConfigError, match=r"depth.*widths=None"):
        build_model("resnet20", depth=3)
    with pytest.raises(ConfigError, match="options are: none"):
        build_model("vgg8", widths=(1, 2, 3))
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("resnet8", num_classes=0)


# -- HookedModel ---------------------------------------------------------------------------------------

class TinyCNN(nn.Module):
    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.ModuleDict({
            "block1": nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
            "block2": nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU()),
        })
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.body["block2"](self.body["block1"](self.stem(x)))
        return self.head(torch.flatten(self.pool(h), 1))


def test_hooked_model_taps_stages_and_classifier_input():
    net = TinyCNN().eval()
    model = HookedModel(net, ["stem", "body.block1", "body.block2"], None, "head", input_shape=(1, 28, 28))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        f = model.forward_features(x)
        expected = net(x)
        h1 = net.body["block1"](net.stem(x))
        pooled = net.pool(net.body["block2"](h1)).flatten(1)
    assert torch.equal(f.logits, expected) and torch.equal(model(x), expected)
    assert [tuple(s.shape[1:]) for s in f.stages] == [(8, 28, 28), (16, 14, 14), (32, 7, 7)]
    assert torch.equal(f.stages[1], h1) and torch.equal(f.pooled, pooled)
    assert all(p is s for p, s in zip(f.preact_stages, f.stages))
    shapes = model.feature_shapes()
    assert shapes.stages == [(8, 28, 28), (16, 14, 14), (32, 7, 7)] and shapes.pooled == 32
    assert shapes.num_classes == 6 and model.num_stages == 2
    assert model.fc is net.head
    # no duplicated parameters in the state dict, every key belongs to the wrapped module
    assert all(k.startswith("module.") for k in model.state_dict())
    assert n_params(model) == n_params(net)
    # the hooks capture nothing outside forward_features, and can be removed
    model(x)
    assert model._capture is None
    model.remove_hooks()
    assert not net.stem._forward_hooks and not net.head._forward_pre_hooks


def test_hooked_model_embed_path_and_gradients():
    net = TinyCNN()
    model = HookedModel(net, ["stem", "body.block2"], "pool", "head", input_shape=(1, 16, 16))
    f = model.forward_features(torch.randn(2, 1, 16, 16))
    assert f.pooled.shape == (2, 32)
    (f.logits.sum() + f.stages[0].mean()).backward()
    assert net.stem[0].weight.grad is not None and net.head.weight.grad is not None


def test_hooked_model_matches_a_zoo_model():
    zoo = build_model("resnet8", num_classes=10).eval()
    model = HookedModel(zoo, ["units.0", "units.1", "units.2", "units.3"], None, "fc")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = zoo.forward_features(x), model.forward_features(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pooled, b.pooled)
    assert all(torch.equal(s, t) for s, t in zip(a.stages, b.stages))


def test_hooked_model_errors():
    net = TinyCNN()
    with pytest.raises(ConfigError, match="body.block1"):
        HookedModel(net, ["stem", "body.blok1"], None, "head")
    assert not net.stem._forward_hooks  # a bad path hooks nothing
    with pytest.raises(ConfigError, match="classifier path 'fc'"):
        HookedModel(net, ["stem"], None, "fc")
    model = HookedModel(net, ["stem", "body.block1"], None, "head")
    for call in (lambda: model.run_units(torch.randn(1, 1, 8, 8), 0),
                 lambda: model.head(torch.randn(1, 32)),
                 lambda: model.blocks):
        with pytest.raises(ConfigError, match="cannot run a range of its units"):
            call()
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.unused = nn.Linear(4, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x)

    skipping = HookedModel(Skips(), ["a", "unused"], None, "a")
    with pytest.raises(ShapeError, match="never called"):
        skipping.forward_features(torch.randn(2, 4))


@pytest.mark.parametrize("name, linear_std, linear_bias_zero", [
    ("vgg8", 0.01, True), ("MobileNetV2", 0.01, True), ("wrn_16_2", None, True), ("resnet56", None, False)])
def test_shared_init_follows_each_familys_scheme(name, linear_std, linear_bias_zero):
    """models/init.py: Kaiming fan-out convs (zero bias), BN 1/0, and the family's classifier rule."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=100, in_channels=3, image_size=32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4096]
    for conv in convs:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)
        assert conv.bias is None or not conv.bias.any()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bool((bn.weight == 1).all()) and not bn.bias.any()
    fc = model.fc
    if linear_std is not None:
        assert fc.weight.std().item() == pytest.approx(linear_std, rel=0.1)
    else:  # PyTorch's default: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert fc.weight.abs().max().item() <= fc.in_features ** -0.5
    assert (not fc.bias.any()) == linear_bias_zero
