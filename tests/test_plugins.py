"""Plugins: a user's model and loss, registered in their own module, trained from a config (``imports:``),
listed by the CLI, and the errors of a plugin that cannot be loaded."""
from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from adakd import plugins
from adakd.api import load_config, train
from adakd.errors import ConfigError
from adakd.registry import DISTILLERS, MODELS

PLUGIN = Path(__file__).parent / "plugins" / "user_components.py"


@pytest.fixture(autouse=True)
def registries_restored(monkeypatch):
    """What a test's plugins register is gone afterwards (other tests iterate over the registries)."""
    from adakd.registry import DATASETS, STRATEGIES

    saved = [(r, dict(r._entries)) for r in (MODELS, DISTILLERS, STRATEGIES, DATASETS)]
    modules = set(sys.modules)
    monkeypatch.setattr(plugins, "_loaded", {})
    yield
    for registry, entries in saved:
        registry._entries.clear()
        registry._entries.update(entries)
    for name in set(sys.modules) - modules:
        if name.startswith(("adakd_plugin_", "ep_plugin_mod")):
            del sys.modules[name]


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def tiny(tmp_path: Path, root: Path, name: str, **extra) -> dict:
    return {
        "name": name, "seed": 0, "device": "cpu", "output_dir": str(tmp_path / "runs"), "progress": False,
        "imports": [os.path.relpath(PLUGIN, tmp_path)],  # relative to the config file
        "data": {"name": "fashion_mnist", "root": str(root), "batch_size": 32, "eval_batch_size": 500,
                 "train_subset": 512, "test_subset": 500},
        "train": {"epochs": 2, "precision": "fp32", "channels_last": False, "optimizer": {"lr": 0.05},
                  "schedule": {"name": "cosine"}},
        **extra,
    }


def test_a_user_model_and_loss_train_from_a_config(tmp_path, fmnist_root):
    write_config(tmp_path / "teacher.yaml", tiny(tmp_path, fmnist_root, "teacher",
                                                  student={"name": "user_tiny_convnet", "kwargs": {"width": 16}}))
    cfg_path = write_config(tmp_path / "student.yaml", tiny(
        tmp_path, fmnist_root, "student",
        student={"name": "user_tiny_convnet", "kwargs": {"width": 8}},
        teacher={"name": "user_tiny_convnet", "kwargs": {"width": 16}, "recipe": "teacher.yaml"},
        losses={"kd": {}, "user_pooled_l2": {"scale": 0.5}}))
    cfg = load_config(cfg_path)
    assert "user_tiny_convnet" in MODELS and "user_pooled_l2" in DISTILLERS
    summary = train(cfg, log=lambda m: None)
    records = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert all("user_pooled_l2" in r and "kd" in r for r in records)
    assert records[-1]["user_pooled_l2"] < records[0]["user_pooled_l2"]  # the user's loss is optimised
    assert summary["best_top1"] > 30.0  # and the user's model learns (10 classes: chance is 10%)


def test_a_user_losss_options_are_typed(tmp_path, fmnist_root):
    cfg = tiny(tmp_path, fmnist_root, "x", student={"name": "resnet8"},
               teacher={"name": "resnet8", "checkpoint": "none.pt"}, losses={"user_pooled_l2": {"scal": 2}})
    load_config(write_config(tmp_path / "x.yaml", cfg))  # registers the plugin
    from adakd.losses.build import check_loss_options

    with pytest.raises(ConfigError, match="losses.user_pooled_l2.scal: unknown option. Did you mean 'scale'"):
        check_loss_options("user_pooled_l2", {"scal": 2})


def test_plugin_errors_name_the_module(tmp_path, fmnist_root):
    cfg = tiny(tmp_path, fmnist_root, "x", student={"name": "resnet8"})
    cfg["imports"] = ["no_such_package.models"]
    with pytest.raises(ConfigError, match="plugin module 'no_such_package.models' not found"):
        load_config(write_config(tmp_path / "a.yaml", cfg))
    cfg["imports"] = ["missing_file.py"]
    with pytest.raises(ConfigError, match="plugin file .*missing_file.py not found"):
        load_config(write_config(tmp_path / "b.yaml", cfg))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('my bug')\n")
    cfg["imports"] = ["broken.py"]
    with pytest.raises(ConfigError, match="failed to import: RuntimeError: my bug"):
        load_config(write_config(tmp_path / "c.yaml", cfg))


def test_entry_point_plugins_are_loaded_once(monkeypatch, tmp_path):
    module = tmp_path / "ep_plugin_mod.py"
    module.write_text("from adakd.registry import MODELS\nLOADS = globals().get('LOADS', 0) + 1\n"
                      "MODELS.register('ep_plugin_model')(lambda num_classes=10, in_channels=3, image_size=32: None)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(name="mine", value="ep_plugin_mod", group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points",
                        lambda group: [ep] if group == plugins.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    assert plugins.load_entry_points() == ["mine"]
    assert plugins.load_entry_points() == ["mine"]  # a second call imports nothing again
    assert "ep_plugin_model" in MODELS
    assert sys.modules["ep_plugin_mod"].LOADS == 1


def test_a_registry_resolves_a_prefixed_family_on_first_use():
    """Families too large to list up front (timm:<any name>) register on first lookup through a resolver."""
    from adakd.registry import Registry

    seen = []
    reg = Registry("widget")
    reg.add_resolver("fam:", lambda name: (seen.append(name), reg.register(name)(lambda: name)))
    assert "fam:x" in reg and reg.get("fam:x").factory() == "fam:x"
    assert reg.get("fam:x") and seen == ["fam:x"]  # resolved once
    with pytest.raises(ConfigError, match="unknown widget 'other'"):
        reg.get("other")
    assert "fam:" not in reg  # the bare prefix is no name


def test_cli_import_flag_lists_a_plugins_components(tmp_path):
    import subprocess

    out = subprocess.run([sys.executable, "-m", "adakd", "--import", str(PLUGIN), "list", "models"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "user_tiny_convnet" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "adakd", "--import", "no_such_plugin_mod", "list", "models"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "plugin module 'no_such_plugin_mod' not found" in bad.stderr


# ----------------------------------------------------------------------------- the README's user model
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_user_model() -> str:
    """The ```python snippet of the README's "Extending" section, as written there (dedented)."""
    import textwrap

    section = README.read_text().split("\n## Extending\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    return textwrap.dedent(code)


def user_model_config(tmp_path: Path, root: Path, plugin: str, student: str, **extra) -> Path:
    """KD from a (random) teacher of the README's model to a narrower one, on 512 Fashion-MNIST images, one epoch."""
    from adakd.models import build_model

    (tmp_path / plugin).write_text(readme_user_model() + extra.pop("plugin_extra", ""))
    plugins.import_plugin(str(tmp_path / plugin))
    teacher = tmp_path / "teacher.pt"
    torch.save(build_model("my_net", num_classes=10, in_channels=1, image_size=28, width=16).state_dict(), teacher)
    cfg = {**tiny(tmp_path, root, "user-model"), "imports": [plugin], "student": {"name": student, "kwargs": {"width": 8}},
           "teacher": {"name": "my_net", "kwargs": {"width": 16}, "checkpoint": str(teacher)}, "losses": {"kd": {}}}
    cfg["data"].update(train_subset=512, test_subset=200, batch_size=32, eval_batch_size=200)
    cfg["train"]["epochs"] = 1
    return write_config(tmp_path / "user.yaml", cfg)


def test_the_readmes_user_model_passes_the_dry_run_and_trains(tmp_path, fmnist_root, capsys):
    """The snippet sets no input_shape: it is probed with the 1x28x28 input it is built for (it was 3x32x32)."""
    from adakd.cli import main

    cfg = user_model_config(tmp_path, fmnist_root, "my_models.py", "my_net")
    assert main(["train", str(cfg), "--dry-run"]) == 0
    said = capsys.readouterr()
    assert "config OK: fashion_mnist 1x28x28, 10 classes; student MyNet, teacher MyNet" in said.out + said.err
    assert main(["train", str(cfg), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    records = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["kd"] > 0 and summary["best_top1"] > 10.0  # chance is 10%


BROKEN = '''

class BrokenNet(MyNet):
    def embed(self, h):
        raise RuntimeError("my pooling went wrong")


@MODELS.register("broken_net")
def broken_net(num_classes: int, in_channels: int, image_size: int, width: int = 16) -> BrokenNet:
    return BrokenNet(num_classes, in_channels, width)


class WrongStem(MyNet):
    def __init__(self, num_classes: int, in_channels: int, width: int) -> None:
        super().__init__(num_classes, 3, width)  # a stem for 3 channels, whatever the data has


@MODELS.register("wrong_stem_net")
def wrong_stem_net(num_classes: int, in_channels: int, image_size: int, width: int = 16) -> WrongStem:
    return WrongStem(num_classes, in_channels, width)
'''


@pytest.mark.parametrize("model, flag, names, error", [
    ("broken_net", [], "(BrokenNet.embed, my_models.py:", "RuntimeError: my pooling went wrong."),
    ("broken_net", ["--dry-run"], "(BrokenNet.embed, my_models.py:", "RuntimeError: my pooling went wrong."),
    # the error is raised in torch's conv, called by adakd's forward_features of the user's model
    ("wrong_stem_net", ["--dry-run"], "(in WrongStem.forward_features; WrongStem is defined in my_models.py)",
     "RuntimeError: Given groups=1, weight of size [8, 3, 3, 3], expected input[2, 1, 28, 28] to have 3 channels"),
])
def test_an_error_inside_a_users_component_is_one_message_naming_it(tmp_path, fmnist_root, capsys, model, flag,
                                                                    names, error):
    from adakd.cli import main

    cfg = user_model_config(tmp_path, fmnist_root, "my_models.py", model, plugin_extra=BROKEN)
    assert main(["train", str(cfg), *flag]) == 2
    err = capsys.readouterr().err  # the training's log lines, then the one message, no traceback
    assert "Traceback" not in err and err.count("adakd: error") == 1
    message = err.splitlines()[-1]
    assert message.startswith(f"adakd: error: your model {model!r} {names}")
    assert f"raised {error}" in message and "Check it against the feature contract" in message
    with pytest.raises(RuntimeError):  # --debug: the traceback
        main(["--debug", "train", str(cfg), *flag])
