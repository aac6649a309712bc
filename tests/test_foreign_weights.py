"""Foreign weight files by model name (issue 25, item 1): the reference (RepDistiller/mdistiller) layout,
the prefixes their saved students carry, detection, the one error for a file that fits nothing, and the
entry points (``adakd.build_model(weights=)``, ``teacher.checkpoint`` + ``teacher.format``).

The reference layouts themselves are checked against the reference code's numbers in
tests/test_reference_weights.py; here a file in the reference layout is made by
``to_reference_state_dict`` from a model with random weights."""
from __future__ import annotations

import pytest
import torch

import adakd
from adakd.engine.checkpoint import load_model_weights, save_checkpoint
from adakd.errors import ConfigError
from adakd.models import build_model
from adakd.models.foreign import load_foreign_state_dict, match_layout, to_reference_state_dict

#: one model per family (the reference code's names for each are checked in test_reference_weights.py)
FAMILIES = ["resnet8", "resnet32x4", "wrn_16_2", "wrn_40_1", "ResNet50", "ResNet18", "vgg13", "MobileNetV2",
            "ShuffleV1", "ShuffleV2", "mobilenetv2_tinyimagenet", "MobileNetV1"]


def randomised(name: str, seed: int = 0) -> torch.nn.Module:
    """``name`` with every float tensor random (BN statistics included), in eval mode."""
    model = build_model(name, num_classes=100)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in key
                        else 0.1 * torch.randn(t.shape, generator=g))
    return model.eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", FAMILIES)
def test_reference_layout_round_trip_through_a_file(tmp_path, name):
    """``{"model": reference sd, "epoch": 240}`` (a published teacher's container) loads by name, detected as
    the reference layout, and gives back the same weights and logits."""
    source = randomised(name)
    reference = to_reference_state_dict(source)
    assert not any(k.startswith("units.") for k in reference)  # their names, not ours
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": reference, "epoch": 240, "best_acc": 70.0}, path)
    loaded = adakd.build_model(name, num_classes=100, weights=path).eval()
    assert same_weights(source, loaded)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(source(x), loaded(x))
    assert to_reference_state_dict(loaded).keys() == reference.keys()


@pytest.mark.parametrize("prefix", ["module.", "student.", "module.student."])
def test_saved_students_with_prefixes_load(tmp_path, prefix):
    """RepDistiller (DataParallel: ``module.``) and mdistiller (``distiller.state_dict()``: ``module.student.``
    next to the teacher's and connectors' keys, which are skipped) students."""
    source = randomised("resnet8x4", seed=1)
    sd = {prefix + k: v for k, v in to_reference_state_dict(source).items()}
    if "student" in prefix:  # a distiller also holds its teacher and connectors
        teacher = to_reference_state_dict(randomised("resnet32x4", seed=2))
        sd.update({prefix.replace("student", "teacher") + k: v for k, v in teacher.items()})
        sd[prefix.replace("student", "conn") + "0.weight"] = torch.zeros(3, 3)
    model = build_model("resnet8x4")
    assert load_foreign_state_dict(model, {"model": sd, "epoch": 240}) == "reference"
    assert same_weights(source, model)
    assert match_layout(model, sd).prefix == prefix


def test_own_layout_and_missing_num_batches_tracked():
    """Our own names load as ``adakd``; a file without num_batches_tracked (PyTorch < 0.4.1) still loads."""
    source = randomised("wrn_16_2", seed=3)
    model = build_model("wrn_16_2")
    assert load_foreign_state_dict(model, source.state_dict()) == "adakd"
    assert same_weights(source, model)
    old = {k: v for k, v in to_reference_state_dict(source).items() if not k.endswith("num_batches_tracked")}
    model = build_model("wrn_16_2")
    assert load_foreign_state_dict(model, old) == "reference"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(source(x), model.eval()(x))


def test_a_file_that_fits_nothing_names_the_closest_layout(tmp_path):
    sd = to_reference_state_dict(randomised("resnet8"))
    sd["fc.weight"] = torch.zeros(10, 64)  # a CIFAR-10 classifier
    sd.pop("layer3.0.downsample.1.running_mean")
    sd["extra.weight"] = torch.zeros(2)
    path = tmp_path / "other.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(ConfigError) as info:
        adakd.build_model("resnet8", num_classes=100, weights=path)
    msg = str(info.value)
    assert msg.count("closest") == 1 and "layout 'reference'" in msg
    assert "1 shape mismatches: fc.weight file (10, 64) vs model (100, 64)" in msg
    assert "1 missing: layer3.0.downsample.1.running_mean (64,)" in msg
    assert "1 unexpected: extra.weight (2,)" in msg
    with pytest.raises(ConfigError, match="has no 'torchvision' weights layout"):
        load_model_weights(build_model("resnet8"), path, "torchvision")


def test_format_forces_a_layout(tmp_path):
    source = randomised("resnet8")
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    with pytest.raises(ConfigError, match="closest is layout 'reference'"):
        load_model_weights(build_model("resnet8"), path, "repdistiller")
    assert load_model_weights(build_model("resnet8"), path, "adakd") == "adakd"
    with pytest.raises(ConfigError, match="unknown weights format 'keras'"):
        load_model_weights(build_model("resnet8"), path, "keras")


def test_adakd_checkpoints_still_load_as_ours(tmp_path):
    source = randomised("resnet8")
    path = tmp_path / "student.pt"
    save_checkpoint(path, {"model": source.state_dict()})
    model = build_model("resnet8")
    assert load_model_weights(model, path) == "adakd"
    assert same_weights(source, model)
    with pytest.raises(ConfigError, match="is an adakd checkpoint"):
        load_model_weights(build_model("resnet8"), path, "mdistiller")


@pytest.mark.parametrize("fmt", ["auto", "mdistiller"])
def test_teacher_checkpoint_takes_a_reference_file(tmp_path, fmt):
    """``teacher.checkpoint: FILE`` (+ ``teacher.format``) loads a published-teacher-shaped file, frozen."""
    from adakd.config import TeacherConfig
    from adakd.data import DatasetInfo
    from adakd.engine.teacher import load_teacher

    source = randomised("resnet32x4", seed=4)
    path = tmp_path / "resnet32x4_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"model": to_reference_state_dict(source), "epoch": 240}, path)
    info = DatasetInfo(name="cifar100", num_classes=100, in_channels=3, image_size=32, mean=(0.5,) * 3,
                       std=(0.25,) * 3, class_names=tuple(map(str, range(100))))
    teacher = load_teacher(TeacherConfig(name="resnet32x4", checkpoint=str(path), format=fmt), info,
                           torch.device("cpu"), path)
    assert same_weights(source, teacher) and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ConfigError, match="teacher checkpoint .* does not fit"):
        load_teacher(TeacherConfig(name="resnet8x4", checkpoint=str(path), format=fmt), info,
                     torch.device("cpu"), path)


def test_a_run_distils_from_a_reference_teacher_file(tmp_path, fmnist_root, capsys):
    """``adakd train`` with ``teacher.checkpoint`` = a RepDistiller-shaped file (``module.`` prefixes, as a
    DataParallel run saves it, ``teacher.format: repdistiller``): the teacher is loaded, not trained; a teacher
    of another architecture stops the run with the one message."""
    from adakd.cli import main
    from test_faults import tiny, write_config

    teacher = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, widths=[8, 8, 16])
    path = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"model": {f"module.{k}": v for k, v in to_reference_state_dict(teacher).items()}, "epoch": 240},
               path)
    cfg = tiny(fmnist_root, tmp_path / "kd", epochs=1)
    cfg["data"].update(train_subset=32, test_subset=50)
    cfg.update(teacher={"name": "resnet8", "kwargs": {"widths": [8, 8, 16]}, "checkpoint": str(path),
                        "format": "repdistiller"}, losses={"kd": {}})
    assert main(["train", str(write_config(tmp_path / "kd.yaml", cfg))]) == 0
    assert "training teacher" not in capsys.readouterr().err
    cfg["teacher"]["kwargs"] = {"widths": [8, 16, 16]}
    cfg["run_dir"] = str(tmp_path / "kd2")
    assert main(["train", str(write_config(tmp_path / "kd2.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "closest is layout 'reference' with key prefix 'module.'" in err


def test_a_wrapped_library_model_loads_its_own_library_layout(tmp_path):
    """A ChainAdapter (how tv: models are wrapped; torchvision is not needed here) whose native layout is the
    library's: a library weight file (a bare state dict, the wrapped module's names) loads as that layout."""
    from torch import nn

    from adakd.models.hooked import ChainAdapter

    def wrapped() -> ChainAdapter:
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1)),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
        adapter = ChainAdapter(net, stem=net[0], blocks=[net[1]], embed=net[2], classifier=net[4],
                               input_shape=(3, 16, 16), family="test")
        adapter.native_format = "torchvision"
        return adapter

    source = wrapped()
    path = tmp_path / "library-weights.pth"
    torch.save(source.module.state_dict(), path)  # the library's own names: 0.weight, 1.0.weight, 4.bias ...
    assert "0.weight" in torch.load(path, weights_only=True)
    for fmt in ("auto", "torchvision"):
        model = wrapped()
        assert load_model_weights(model, path, fmt) == "torchvision"
        assert same_weights(source, model)
    with pytest.raises(ConfigError, match="has no 'reference' weights layout"):
        load_model_weights(wrapped(), path, "reference")
