"""Config loading: inheritance, dotted overrides, and one clear error per mistake."""
from __future__ import annotations

from pathlib import Path

import pytest

from adakd.config import apply_overrides, load_config, parse_override
from adakd.errors import ConfigError

BASE = """
name: t
data: {name: fashion_mnist, batch_size: 32}
student: {name: resnet8}
train: {epochs: 2, optimizer: {lr: 0.1}}
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_and_fills_defaults(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.data.batch_size == 32
    assert cfg.train.optimizer.lr == 0.1
    assert cfg.train.optimizer.momentum == 0.9  # default
    assert cfg.strategy.name == "standard"


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["seed=7", "train.epochs=5", "train.schedule.milestones=[1, 2]",
                                             "data.root=/tmp/x", "train.precision=bf16"])
    assert cfg.seed == 7 and cfg.train.epochs == 5
    assert cfg.train.schedule.milestones == [1, 2]
    assert cfg.data.root == "/tmp/x"
    assert cfg.train.precision == "bf16"


def test_base_inheritance(tmp_path):
    write(tmp_path, BASE, "base.yaml")
    cfg = load_config(write(tmp_path, "base: base.yaml\ntrain: {epochs: 9}\n"))
    assert cfg.train.epochs == 9 and cfg.train.optimizer.lr == 0.1 and cfg.student.name == "resnet8"


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_unknown_key_suggests_close_match(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'.*Did you mean 'train.epochs'"):
        load_config(write(tmp_path, BASE), ["train.epoch=3"])


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train.epochs"):
        load_config(write(tmp_path, BASE), ["train.epochs=many"])


def test_malformed_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match="malformed YAML at line 3"):
        load_config(write(tmp_path, "name: x\ndata: [unclosed\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_losses_need_teacher(tmp_path):
    with pytest.raises(ConfigError, match="no teacher"):
        load_config(write(tmp_path, BASE + "losses: {kd: {}}\n"))


def test_teacher_needs_weights(tmp_path):
    with pytest.raises(ConfigError, match="teacher.checkpoint"):
        load_config(write(tmp_path, BASE + "teacher: {name: resnet20}\n"))


def test_teacher_recipe_path_is_relative_to_config(tmp_path):
    (tmp_path / "sub").mkdir()
    cfg = load_config(write(tmp_path / "sub", BASE + "teacher: {name: resnet20, recipe: teacher.yaml}\n"))
    assert cfg.teacher.recipe == str((tmp_path / "sub" / "teacher.yaml").resolve())


def test_losses_list_form(tmp_path):
    text = BASE + "teacher: {name: resnet20, checkpoint: x.pt}\nlosses: [kd, {name: crd, weight: 0.8}]\n"
    cfg = load_config(write(tmp_path, text))
    assert cfg.losses == {"kd": {}, "crd": {"weight": 0.8}}


def test_override_parsing():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=[1,2]") == (["a"], [1, 2])
    assert parse_override("a=hello") == (["a"], "hello")
    with pytest.raises(ConfigError):
        parse_override("novalue")
    with pytest.raises(ConfigError):
        parse_override("a..b=1")
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"a": 3}, ["a.b=1"])
