"""ImageNet / Tiny-ImageNet support: the torchvision adapter (tested on a fake ``torchvision`` whose
ResNets mimic torchvision's module names and forward), an ImageNet-style image folder end to end,
and every config under configs/imagenet and configs/tiny_imagenet."""
from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import adakd.api  # noqa: F401  (registers everything)
from adakd.cli import main
from adakd.config import load_config, validate
from adakd.data import DataConfig, build_data
from adakd.engine.checkpoint import load_checkpoint, load_weights
from adakd.engine.trainer import Trainer
from adakd.errors import ConfigError
from adakd.tools.export import export_student
from adakd.losses.build import build_distiller
from adakd.models import build_model
from adakd.registry import DATASETS, DISTILLERS, MODELS, STRATEGIES

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- a fake torchvision

class FakeBasicBlock(nn.Module):
    """torchvision's BasicBlock layout: conv1 bn1 relu conv2 bn2 (+ downsample), out += identity, relu."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class FakeResNet(nn.Module):
    """torchvision.models.ResNet's names and forward, with tiny widths (4, 8, 8, 16)."""

    def __init__(self, layers: list[int], num_classes: int = 1000, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin = [4, 8, 8, 16], 4
        for i, (n, w) in enumerate(zip(layers, widths), start=1):
            blocks = [FakeBasicBlock(cin, w, 1 if i == 1 else 2)] + [FakeBasicBlock(w, w, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, num_classes)
        for m in self.modules():  # non-trivial BN statistics, so eval-mode outputs depend on them
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


LAYERS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3], "resnet50": [3, 4, 6, 3]}
CALLS: list[dict] = []


def _factory(arch: str):
    def build(*, weights=None, progress=True, num_classes=1000, zero_init_residual=False):
        CALLS.append({"arch": arch, "weights": weights, "num_classes": num_classes})
        if weights is not None:
            torch.manual_seed(1000)  # "pretrained": the same weights every time
        return FakeResNet(LAYERS[arch], num_classes, zero_init_residual)

    return build


@pytest.fixture
def fake_torchvision(monkeypatch):
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    for arch in LAYERS:
        setattr(models, arch, _factory(arch))
    tv.models = models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    CALLS.clear()
    return models


# --------------------------------------------------------------------------- the adapter

def test_tv_models_registered_without_torchvision(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    assert {"tv_resnet18", "tv_resnet34", "tv_resnet50"} <= set(MODELS.names())
    assert main(["list", "models"]) == 0
    assert "tv_resnet34" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"pip install 'adakd\[vision\]'"):
        build_model("tv_resnet18", num_classes=10)


def test_adapter_features_match_the_wrapped_module(fake_torchvision):
    torch.manual_seed(0)
    model = build_model("tv_resnet18", num_classes=10, image_size=32).eval()
    assert CALLS[-1] == {"arch": "resnet18", "weights": None, "num_classes": 10}
    net = model.module
    x = torch.randn(3, 3, 32, 32)
    taps = {}
    handles = [net.get_submodule(p).register_forward_hook(lambda m, a, o, p=p: taps.__setitem__(p, o.clone()))
               for p in ("maxpool", "layer1", "layer2", "layer3", "layer4")]
    with torch.no_grad():
        ref = net(x)
        for h in handles:
            h.remove()
        f = model.forward_features(x)
    assert torch.equal(f.logits, ref)
    assert [tuple(s.shape[1:]) for s in f.stages] == [(4, 8, 8), (4, 8, 8), (8, 4, 4), (8, 2, 2), (16, 1, 1)]
    for s, p in zip(f.stages, ("maxpool", "layer1", "layer2", "layer3", "layer4")):
        assert torch.equal(s, taps[p])
    assert torch.allclose(f.pooled, taps["layer4"].mean(dim=(2, 3)), atol=1e-6)
    assert model.feature_shapes().family == "resnet"


def test_adapter_runs_units_like_the_contract(fake_torchvision):
    model = build_model("tv_resnet34", num_classes=7, image_size=32).eval()
    assert model.stage_ends == [0, 3, 7, 13, 16] and len(model.blocks) == 16
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        h = model.run_units(x, 0, 5)
        pooled, logits = model.head(model.run_units(h, 5))
        f = model.forward_features(x)
        stem = model.run_units(x, 0, 1)
    assert torch.allclose(logits, ref, atol=1e-6) and torch.allclose(pooled, f.pooled, atol=1e-6)
    assert torch.equal(stem, f.stages[0])
    assert model.stage_unit_range(2) == (4, 8)
    # the units share the module's parameters (ABL / SAKD run them one by one); nothing is saved twice
    assert isinstance(model.units, nn.ModuleList) and model.units[1] is model.module.layer1[0]
    assert len(model.state_dict()) == len(model.module.state_dict())


def test_state_dict_uses_torchvision_names(fake_torchvision, tmp_path):
    model = build_model("tv_resnet18", num_classes=10, image_size=32)
    plain = fake_torchvision.resnet18(num_classes=10)  # what a torchvision weight file holds
    assert list(model.state_dict()) == list(plain.state_dict())
    weight_file = tmp_path / "resnet18-fake.pth"
    torch.save(plain.state_dict(), weight_file)
    load_weights(model, load_checkpoint(weight_file)["model"], "torchvision weights")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain.eval()(x))
    fresh = fake_torchvision.resnet18(num_classes=10)
    fresh.load_state_dict(model.state_dict())  # and back into a plain torchvision model (strict)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), plain(x))


def test_builder_options(fake_torchvision):
    model = build_model("tv_resnet50", num_classes=5, in_channels=1, image_size=32, weights="IMAGENET1K_V1")
    assert CALLS[-1]["weights"] == "IMAGENET1K_V1" and CALLS[-1]["num_classes"] == 1000
    assert model.module.fc.out_features == 5 and model.module.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    with pytest.raises(ConfigError, match="unknown option"):
        build_model("tv_resnet18", num_classes=5, depth=3)


def test_distillers_build_on_tv_pairs(fake_torchvision):
    student = build_model("tv_resnet18", num_classes=10, image_size=32)
    teacher = build_model("tv_resnet34", num_classes=10, image_size=32)
    losses = {"kd": {"weight": 0.5, "temperature": 1.0}, "dkd": {"beta": 0.5, "temperature": 1.0, "warmup_epochs": 1},
              "at": {}, "reviewkd": {"warmup_epochs": 1, "max_mid_channels": 16}}
    distiller = build_distiller(losses, student, teacher)
    x = torch.randn(4, 3, 32, 32)
    from adakd.losses.base import DistillContext

    with torch.no_grad():
        t = teacher.eval().forward_features(x)
    terms = distiller(student.forward_features(x), t, DistillContext(labels=torch.tensor([0, 1, 2, 3]), epoch=2, progress=2.0))
    assert terms and all(torch.isfinite(v) for v in terms.values())


def _write_folder(root: Path, colors: dict[str, list[tuple[int, int, int]]], split: str, size: int = 12) -> None:
    from PIL import Image

    for cls, cs in colors.items():
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i, c in enumerate(cs):
            Image.new("RGB", (size, size), c).save(root / split / cls / f"{i}.png")


def test_image_folder_imagenet_layout(tmp_path):
    """train/<wnid>/ and val/<wnid>/ (ImageNet's layout): classes sorted, val is the test split, pixels normalised
    with ImageNet's statistics."""
    colors = {"n02": [(200, 10, 10)] * 4, "n01": [(10, 200, 10)] * 4}
    _write_folder(tmp_path, colors, "train")
    _write_folder(tmp_path, {"n01": [(0, 0, 255)], "n02": [(255, 255, 0)]}, "val")
    data = build_data(DataConfig(name="image_folder", root=str(tmp_path), image_size=8, batch_size=4,
                                 augment=False), "cpu", seed=0)
    assert data.info.class_names == ("n01", "n02") and data.info.image_size == 8
    batch = next(iter(data.test))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (np.array([[0, 0, 255], [255, 255, 0]]) / 255.0 - mean) / std  # per image, per channel
    assert batch.y.tolist() == [0, 1]
    assert np.allclose(batch.x.mean(dim=(2, 3)).numpy(), expected, atol=1e-5)
    assert np.allclose(batch.x.std(dim=(2, 3)).numpy(), 0.0, atol=1e-5)


def test_kd_on_image_folder_with_torchvision_pair(fake_torchvision, tmp_path):
    """End to end: a torchvision weight file as the teacher, tv_resnet18 student, KD, export."""
    rng = np.random.default_rng(0)
    colors = {c: [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(8)] for c in ("a", "b")}
    _write_folder(tmp_path / "data", colors, "train", size=16)
    _write_folder(tmp_path / "data", {c: v[:2] for c, v in colors.items()}, "val", size=16)
    teacher_file = tmp_path / "resnet34-fake.pth"
    torch.save(fake_torchvision.resnet34(num_classes=2).state_dict(), teacher_file)
    cfg = validate({
        "name": "tv-kd", "device": "cpu", "output_dir": str(tmp_path / "runs"), "progress": False,
        "data": {"name": "image_folder", "root": str(tmp_path / "data"), "batch_size": 8, "eval_batch_size": 8},
        "student": {"name": "tv_resnet18"}, "teacher": {"name": "tv_resnet34", "checkpoint": str(teacher_file)},
        "ce_weight": 0.5, "losses": {"kd": {"weight": 0.5, "temperature": 1.0}},
        "train": {"epochs": 1, "precision": "fp32", "channels_last": False, "schedule": {"name": "constant"}},
    })
    summary = Trainer(cfg, log=lambda m: None).run()
    assert summary["teacher_top1"] is not None and 0.0 <= summary["last_top1"] <= 100.0
    result = export_student(summary["run_dir"], "torchscript")
    assert result["model"] == "tv_resnet18" and result["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    state = load_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "student.pt")["model"]
    assert set(state) == set(fake_torchvision.resnet18(num_classes=2).state_dict())  # the student alone


# --------------------------------------------------------------------------- the configs

CONFIGS = sorted((REPO / "configs" / "imagenet").rglob("*.yaml")) + sorted((REPO / "configs" / "tiny_imagenet").rglob("*.yaml"))


def _options(factory) -> set[str]:
    params = inspect.signature(factory.__init__ if inspect.isclass(factory) else factory).parameters
    return {n for n in params if n not in ("self", "student", "teacher")}


def test_config_folders_complete():
    names = {str(p.relative_to(REPO / "configs")) for p in CONFIGS}
    for pair in ("r34_r18", "r50_mv1"):
        for method in ("kd", "dkd", "at", "reviewkd"):
            assert {f"imagenet/{pair}/{method}.yaml", f"imagenet/{pair}/{method}_abl.yaml"} <= names
    tiny_pairs = ("res56_res20", "res110_res20", "vgg13_vgg8", "wrn40_2_wrn16_2", "vgg13_mv2")
    for pair in tiny_pairs:
        for loss in ("fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ft", "nst", "crd"):
            assert f"tiny_imagenet/{pair}/{loss}.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_validates(path):
    cfg = load_config(path)
    assert cfg.data.name in DATASETS and cfg.student.name in MODELS
    assert cfg.strategy.name in ("standard", "abl", "sakd")
    if cfg.strategy.name in STRATEGIES:
        STRATEGIES.get(cfg.strategy.name)
    if cfg.teacher is not None:
        assert cfg.teacher.name in MODELS
        if cfg.teacher.recipe:  # the recipe trains exactly the teacher
            recipe = load_config(cfg.teacher.recipe)
            assert (recipe.student.name, recipe.teacher, recipe.losses) == (cfg.teacher.name, None, {})
    for name, options in cfg.losses.items():
        assert set(options) <= _options(DISTILLERS.get(name).factory) | {"weight"}, (name, options)
    if "imagenet" == path.relative_to(REPO / "configs").parts[0]:
        assert cfg.data.name == "image_folder" and cfg.train.epochs == 100 and cfg.data.batch_size == 512
        opt, sched = cfg.train.optimizer, cfg.train.schedule
        assert (opt.lr, opt.weight_decay, sched.milestones, sched.gamma) == (0.2, 1e-4, [30, 60, 90], 0.1)
    else:
        assert cfg.data.name == "tiny_imagenet" and cfg.train.epochs == 240 and cfg.data.batch_size == 64


def test_imagenet_loss_settings():
    base = REPO / "configs" / "imagenet"
    kd = load_config(base / "r34_r18" / "kd.yaml")
    assert kd.ce_weight == 0.5 and kd.losses["kd"] == {"weight": 0.5, "temperature": 1.0}
    for pair, beta in (("r34_r18", 0.5), ("r50_mv1", 2.0)):
        dkd = load_config(base / pair / "dkd.yaml")
        assert dkd.losses["dkd"] == {"alpha": 1.0, "beta": beta, "temperature": 1.0, "warmup_epochs": 1}
        abl = load_config(base / pair / "dkd_abl.yaml")
        assert abl.strategy.name == "abl" and abl.losses == dkd.losses and abl.data.val_fraction > 0
    assert load_config(base / "r50_mv1" / "at.yaml").student.name == "MobileNetV1"
    raw = yaml.safe_load((base / "r34_r18" / "at.yaml").read_text())
    assert raw["teacher"] == {"name": "tv_resnet34", "checkpoint": "~/.cache/torch/hub/checkpoints/resnet34-b627a593.pth"}
    assert load_config(base / "r34_r18" / "at.yaml").student.name == "tv_resnet18"
