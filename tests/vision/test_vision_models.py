"""torchvision (tv:) and timm (timm:) models: names, the feature contract's shapes, chains equal to the
libraries' own forwards, weight files, pretrained-offline errors. Runs in the vision venv only."""
from __future__ import annotations

import sys
import urllib.error

import pytest
import torch
from torch import nn

from adakd.cli import main
from adakd.engine.checkpoint import load_checkpoint, load_weights
from adakd.errors import ConfigError, ShapeError
from adakd.losses.build import build_distiller
from adakd.models import ContractModel, HookedModel, build_model
from adakd.models import timm_adapter, torchvision_adapter
from adakd.models.hooked import ChainAdapter
from adakd.registry import MODELS
from adakd.strategies.abl_gradients import check_blocks

SIZE = 32
#: name -> (stage shapes stem first, pooled dim) at 3x32x32: the papers' widths, strides 2 per stage
#: (ResNet/ConvNeXt stems stride 4); ViT: 2x2 patches + class token = 5 tokens.
EXPECTED = {
    "tv:resnet18": ([(64, 8, 8), (64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)], 512),
    "tv:resnet50": ([(64, 8, 8), (256, 8, 8), (512, 4, 4), (1024, 2, 2), (2048, 1, 1)], 2048),
    "tv:mobilenet_v2": ([(32, 16, 16), (16, 16, 16), (24, 8, 8), (32, 4, 4), (96, 2, 2), (1280, 1, 1)], 1280),
    "tv:mobilenet_v3_small": ([(16, 16, 16), (16, 8, 8), (24, 4, 4), (48, 2, 2), (576, 1, 1)], 576),
    "tv:efficientnet_b0": ([(32, 16, 16), (16, 16, 16), (24, 8, 8), (40, 4, 4), (112, 2, 2), (1280, 1, 1)], 1280),
    "tv:convnext_tiny": ([(96, 8, 8), (96, 8, 8), (192, 4, 4), (384, 2, 2), (768, 1, 1)], 768),
    "tv:regnet_y_400mf": ([(32, 16, 16), (48, 8, 8), (104, 4, 4), (208, 2, 2), (440, 1, 1)], 440),
    "tv:vit_b_32": ([(2, 768)] * 5, 768),
    "timm:resnet18": ([(64, 8, 8), (64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)], 512),
    "timm:mobilenetv3_small_050": ([(16, 16, 16), (8, 8, 8), (16, 4, 4), (24, 2, 2), (288, 1, 1)], 1024),
    "timm:efficientnet_b0": ([(32, 16, 16), (16, 16, 16), (24, 8, 8), (40, 4, 4), (112, 2, 2), (1280, 1, 1)], 1280),
    "timm:convnext_atto": ([(40, 8, 8), (40, 8, 8), (80, 4, 4), (160, 2, 2), (320, 1, 1)], 320),
    "timm:vit_tiny_patch16_224": ([(5, 192)] * 5, 192),
    "timm:regnetx_002": ([(32, 16, 16), (24, 8, 8), (56, 4, 4), (152, 2, 2), (368, 1, 1)], 368),
}
HOOKED = {"timm:vit_tiny_patch16_224", "timm:regnetx_002"}  # no chain: hooks only


def _build(name: str, **kw) -> ContractModel:
    torch.manual_seed(0)
    return build_model(name, num_classes=10, in_channels=3, image_size=SIZE, **kw).eval()


def test_registered_names_exist_in_the_libraries():
    import timm
    import torchvision.models as tvm

    tv_names = set(tvm.list_models(module=tvm))
    ours = [n[3:] for n in MODELS.names() if n.startswith("tv:")]
    assert len(ours) == sum(len(v) for v in torchvision_adapter.FAMILIES.values())
    assert set(ours) <= tv_names, set(ours) - tv_names
    timm_names = [n[5:] for n in MODELS.names() if n.startswith("timm:")]
    assert timm_names and all(timm.is_model(n) for n in timm_names)


def test_list_models_shows_families_without_importing_them(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "tv:resnet50" in out and "tv:vit_b_16" in out and "timm:mobilenetv3_small_050" in out
    assert "tv_resnet34" in out  # the old names stay, as aliases


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_family_contract(name):
    stages, pooled_dim = EXPECTED[name]
    model = _build(name)
    x = torch.randn(2, 3, SIZE, SIZE)
    inner = model.module
    classifier_input = {}
    handle = model.fc.register_forward_pre_hook(lambda m, a: classifier_input.setdefault("x", a[0].clone()))
    with torch.no_grad():
        ref = inner(x)  # the library's own forward
        handle.remove()
        f = model.forward_features(x)
    assert torch.equal(model(x), ref)
    assert torch.allclose(f.logits, ref, atol=1e-5, rtol=1e-5)
    assert [tuple(s.shape[1:]) for s in f.stages] == stages
    assert f.pooled.shape == (2, pooled_dim)
    assert torch.allclose(f.pooled, classifier_input["x"].flatten(1), atol=1e-5)
    shapes = model.feature_shapes()
    assert shapes.stages == stages and shapes.pooled == pooled_dim and shapes.num_classes == 10
    if name in HOOKED:
        assert isinstance(model, HookedModel)
        with pytest.raises(ConfigError, match="cannot run a range of its units"):
            model.run_units(x, 0)
        return
    assert isinstance(model, ChainAdapter)
    # stage by stage == the full forward; the units are the module's own blocks
    h = x
    with torch.no_grad():
        for k in range(len(model.stage_ends)):
            h = model.run_units(h, *model.stage_unit_range(k))
            assert torch.allclose(h, f.stages[k], atol=1e-5), k
        pooled, logits = model.head(h)
    assert torch.allclose(logits, ref, atol=1e-5, rtol=1e-5) and torch.allclose(pooled, f.pooled, atol=1e-5)
    params = {id(p) for p in inner.parameters()}
    assert all(id(p) in params for b in model.blocks for p in b.parameters())
    assert list(model.state_dict()) == list(inner.state_dict())  # the library's key names, nothing twice


def test_chain_adapter_deepcopies_onto_the_copy():
    import copy

    model = _build("tv:convnext_tiny")
    twin = copy.deepcopy(model)
    assert twin.units[1] is twin.module.features[1][0] and twin.fc is twin.module.classifier[2]
    assert twin.embed_module[1] is twin.module.classifier[0]


def test_one_channel_and_num_classes():
    model = build_model("tv:mobilenet_v3_small", num_classes=7, in_channels=1, image_size=28)
    assert model.module.features[0][0].in_channels == 1
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    timm_model = build_model("timm:mobilenetv3_small_050", num_classes=7, in_channels=1, image_size=28)
    assert timm_model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_any_timm_name_registers_on_use_and_bad_names_are_clear():
    model = build_model("timm:resnet14t", num_classes=3, image_size=32)  # not in the common list
    assert "timm:resnet14t" in MODELS and isinstance(model, ChainAdapter)
    with pytest.raises(ConfigError, match="timm has no model 'no_such_net'"):
        build_model("timm:no_such_net", num_classes=3)
    with pytest.raises(ConfigError, match="unknown model 'tv:resnet19'"):
        build_model("tv:resnet19", num_classes=3)


def test_methods_that_cannot_apply_say_so():
    vit, cnn = _build("timm:vit_tiny_patch16_224"), _build("tv:resnet18")
    with pytest.raises(ShapeError, match=r"at needs convolutional feature maps \(C, H, W\)"):
        build_distiller({"at": {}}, vit, cnn)
    with pytest.raises(ConfigError, match="abl needs a student with the feature contract's units"):
        check_blocks(vit)
    assert check_blocks(_build("tv:vit_b_32")) == 12  # torchvision's ViT is a chain: ABL can run its blocks
    # logit and embedding methods apply to any pair
    assert build_distiller({"kd": {}, "crd": {"num_negatives": 8, "embed_dim": 16}}, vit, cnn, num_samples=16)


# --------------------------------------------------------------------------- weights

def test_torchvision_weight_file_round_trips(tmp_path):
    import torchvision.models as tvm

    torch.manual_seed(1)
    plain = tvm.resnet18(num_classes=1000).eval()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(plain.state_dict(), path)
    x = torch.randn(2, 3, 64, 64)
    # as a teacher checkpoint (the engine's loader, weights_only=True)
    teacher = build_model("tv:resnet18", num_classes=1000, image_size=64)
    load_weights(teacher, load_checkpoint(path)["model"], "torchvision weights")
    # as a model option, resized to 10 classes and 1 channel (RGB kernels summed: exact for grey inputs)
    student = build_model("tv:resnet18", num_classes=10, in_channels=1, image_size=64, weights=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(teacher.eval()(x), plain(x))
        grey = x[:, :1]
        ref = plain.avgpool(plain.layer4(plain.layer3(plain.layer2(plain.layer1(
            plain.maxpool(plain.relu(plain.bn1(plain.conv1(grey.expand(-1, 3, -1, -1))))))))))
        assert torch.allclose(student.forward_features(grey).pooled, ref.flatten(1), atol=1e-4)
        assert torch.equal(student.module.layer1[0].conv1.weight, plain.layer1[0].conv1.weight)
    assert student.module.fc.out_features == 10
    fresh = tvm.resnet18(num_classes=1000)
    fresh.load_state_dict(teacher.state_dict())  # and back into plain torchvision (strict)


def test_weight_files_that_hold_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "thing": nn.ReLU()}, path)
    with pytest.raises(ConfigError, match="weights_only=True"):
        build_model("tv:resnet18", num_classes=10, weights=str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("tv:resnet18", num_classes=10, weights=str(tmp_path / "missing.pth"))


def test_timm_weight_file_round_trips(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    plain = timm.create_model("mobilenetv3_small_050", num_classes=1000).eval()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(path))
    same = build_model("timm:mobilenetv3_small_050", num_classes=1000, image_size=32, weights=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(same(x), plain(x))
    resized = build_model("timm:mobilenetv3_small_050", num_classes=10, image_size=32, weights=str(path))
    assert resized(x).shape == (2, 10)


def test_pretrained_offline_says_how_to_pass_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match=r"could not be fetched.*resnet18-f37072fd\.pth.*`weights: /path/to/file\.pth`"):
        build_model("tv:resnet18", num_classes=10, pretrained=True)
    import timm.models._builder as builder

    monkeypatch.setattr(builder, "load_pretrained", lambda *a, **k: offline())
    with pytest.raises(ConfigError, match=r"timm:resnet18 pretrained weights could not be fetched.*weights: /path"):
        build_model("timm:resnet18", num_classes=10, pretrained=True)


def test_no_torchvision_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ConfigError, match="constraints-vision.txt"):
        torchvision_adapter.torchvision_models()
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match="pip install 'adakd\\[vision\\]'"):
        timm_adapter.timm_module()
