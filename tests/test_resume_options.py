"""What a resume compares (issue 29 item 1): the strategy's and distillers' options as resolved.

``resolved.yaml`` beside a run's ``config.yaml`` holds every option of the strategy and of each distiller
with its default filled in; a default changed in the code between the run's start and its resume is a
listed difference, refused by ``--resume`` unless ``--allow-changes`` names it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from adakd.config import validate
from adakd.engine.components import resolved_options
from adakd.engine.trainer import train
from adakd.errors import ConfigError
from adakd.strategies.sakd import SAKDStrategy
from test_ddp import tiny


def sakd_config(root: Path, run_dir: Path, teacher: Path, epochs: int = 1) -> dict:
    cfg = tiny(root, run_dir, epochs=epochs, checkpoint_every_steps=None, max_steps_per_epoch=2)
    cfg.update(losses={"at": {}}, strategy={"name": "sakd", "options": {"init_bias": 0.0}},
               teacher={"name": "resnet8", "kwargs": {"widths": [8, 16, 16]}, "checkpoint": str(teacher)})
    return cfg


@pytest.fixture
def teacher(tmp_path) -> Path:
    from adakd.engine.checkpoint import save_checkpoint
    from adakd.models import build_model

    torch.manual_seed(5)
    model = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, widths=[8, 16, 16])
    save_checkpoint(tmp_path / "teacher.pt", {"model": model.state_dict()})
    return tmp_path / "teacher.pt"


def run(cfg: dict, **kwargs) -> dict:
    return train(validate(cfg), log=lambda m: None, **kwargs)


def test_resolved_options_spell_out_every_default():
    cfg = validate({"data": {"name": "fashion_mnist"}, "student": {"name": "resnet8"},
                    "teacher": {"name": "resnet8", "checkpoint": "x.pt"},
                    "losses": {"kd": {"temperature": 2}}, "strategy": {"name": "sakd"}})
    resolved = resolved_options(cfg)
    from adakd.losses.kd import KD

    assert resolved["losses"] == {"kd": {"weight": KD.default_weight, "temperature": 2.0}}  # None -> default
    assert KD.default_weight == 0.9
    options = resolved["strategy"]["options"]
    assert set(options) == set(SAKDStrategy.Options.model_fields)
    assert options["temperature"] == 5.0 and options["init_bias"] == 10.0


def test_a_changed_default_is_refused_on_resume_and_allowed_when_named(tmp_path, fmnist_root, teacher,
                                                                         monkeypatch):
    run_dir = tmp_path / "run"
    run(sakd_config(fmnist_root, run_dir, teacher))
    recorded = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    assert recorded["strategy"]["options"]["temperature"] == 5.0
    assert recorded["losses"]["at"]["weight"] > 0

    class NewDefaults(SAKDStrategy.Options):  # the code's default moved after the run started
        temperature: float = 2.0

    monkeypatch.setattr(SAKDStrategy, "Options", NewDefaults)
    longer = {**sakd_config(fmnist_root, run_dir, teacher, epochs=2), "resume": True}
    with pytest.raises(ConfigError) as refused:
        run(longer, allow_changes=("train.epochs",))
    message = str(refused.value)
    assert "strategy.options.temperature: 5.0 -> 2.0" in message
    assert "--allow-changes strategy.options.temperature" in message and "temperature=5.0" in message
    summary = run(longer, allow_changes=("train.epochs", "strategy.options.temperature"))
    assert summary["epochs"] == 2
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert history[-1]["changes"] == {"strategy.options.temperature": [5.0, 2.0], "train.epochs": [1, 2]}
    assert yaml.safe_load((run_dir / "resolved.yaml").read_text())["strategy"]["options"]["temperature"] == 2.0
    # the option set in the config keeps the run's value: then nothing differs, nothing to allow
    pinned = {**longer, "strategy": {"name": "sakd", "options": {"init_bias": 0.0, "temperature": 2.0}}}
    assert run(pinned)["epochs"] == 2
    # a loss left out is no changed default: never allowed
    fewer = {**longer, "losses": {"kd": {}}}
    with pytest.raises(ConfigError, match=r"losses.kd.temperature: None -> 4.0") as refused:
        run(fewer, allow_changes=("losses.at.weight",))
    assert "pass --allow-changes" not in str(refused.value)
    # an option the config itself changes is no changed default: never allowed
    other = {**longer, "strategy": {"name": "sakd", "options": {"init_bias": 0.0, "temperature": 3.0}}}
    with pytest.raises(ConfigError, match="only train.epochs"):
        run(other, allow_changes=("strategy.options.temperature",))


def test_a_run_directory_without_resolved_options_still_resumes(tmp_path, fmnist_root, teacher):
    """Written before resolved.yaml existed: its options compare with today's defaults (as they did then),
    and the resume records them from now on."""
    run_dir = tmp_path / "run"
    run(sakd_config(fmnist_root, run_dir, teacher))
    (run_dir / "resolved.yaml").unlink()
    summary = run({**sakd_config(fmnist_root, run_dir, teacher, epochs=2), "resume": True},
                  allow_changes=("train.epochs",))
    assert summary["epochs"] == 2
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert history[-1]["changes"] == {"train.epochs": [1, 2]}
    assert (run_dir / "resolved.yaml").is_file()


def kd_config(root: Path, run_dir: Path, teacher: Path) -> dict:
    cfg = tiny(root, run_dir, epochs=2, checkpoint_every_steps=1, max_steps_per_epoch=3)
    cfg.update(losses={"kd": {}},
               teacher={"name": "resnet8", "kwargs": {"widths": [8, 16, 16]}, "checkpoint": str(teacher)})
    return cfg


def test_a_resume_with_other_teacher_weights_is_refused_unless_allowed(tmp_path, fmnist_root, teacher,
                                                                       monkeypatch):
    """The config names the teacher's file, not its contents: a file replaced in place (or `published` found
    where the recipe stood in) is caught by the digest every training state carries."""
    from adakd.engine.checkpoint import load_checkpoint, save_checkpoint
    from adakd.models import build_model
    from tiny_runs import Killed, kill_after_steps

    run_dir = tmp_path / "run"
    cfg = kd_config(fmnist_root, run_dir, teacher)
    restore = kill_after_steps(monkeypatch, 2, lambda phase, call: call == 2)  # dies in epoch 2
    with pytest.raises(Killed):
        run(cfg)
    restore()
    last = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    assert len(state["teacher_sha256"]) == 64
    torch.manual_seed(6)  # another teacher, same architecture, same path
    other = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, widths=[8, 16, 16])
    save_checkpoint(teacher, {"model": other.state_dict()})
    before = last.read_bytes()
    with pytest.raises(ConfigError) as refused:
        run({**cfg, "resume": True})
    message = str(refused.value)
    assert "the teacher's weights (sha256 " + state["teacher_sha256"][:16] in message
    assert "--allow-changes teacher.weights" in message
    assert last.read_bytes() == before  # refused before a step or a checkpoint
    lines: list[str] = []
    summary = train(validate({**cfg, "resume": True}), log=lines.append, allow_changes=("teacher.weights",))
    assert summary["epochs"] == 2
    assert any("continuing with the new teacher" in line for line in lines)
    assert load_checkpoint(last)["teacher_sha256"] != state["teacher_sha256"]


def test_a_state_without_a_teacher_digest_resumes_as_before():
    from adakd.engine.resume import check_teacher

    check_teacher({}, "ab" * 32, Path("run"), (), print)  # written before the digest existed: no check
    check_teacher({"teacher_sha256": None}, None, Path("run"), (), print)  # no teacher
    with pytest.raises(ConfigError, match="teacher.weights"):
        check_teacher({"teacher_sha256": "cd" * 32}, "ab" * 32, Path("run"), (), print)
