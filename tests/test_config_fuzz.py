"""Property-based: mutated configs thrown at ``adakd train --dry-run`` (cli.main, in-process) never
produce a traceback: exit code 2 with one ``adakd: error:`` message, or 0 when the mutation is valid."""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adakd.cli import main

BASE: dict[str, Any] = {
    "name": "fuzz", "seed": 0, "device": "cpu", "progress": False,
    "data": {"name": "fashion_mnist", "batch_size": 32, "train_subset": 256, "test_subset": 500},
    "teacher": {"name": "resnet20", "checkpoint": "/nonexistent/teacher.pt"},
    "student": {"name": "resnet8", "kwargs": {"widths": [8, 16, 16]}},
    "ce_weight": 0.1,
    "losses": {"kd": {"weight": 0.9, "temperature": 4.0}},
    "strategy": {"name": "standard", "options": {}},
    "train": {"epochs": 2, "precision": "fp32", "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
              "schedule": {"name": "cosine", "milestones": [1, 2]}, "checkpoint_every_steps": 3,
              "on_nonfinite": "error", "sync_batchnorm": False},
}


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    return out


PATHS = _paths(BASE)
NAMES = ["", "kd", "crd", "resnet8", "nope", "fp32", "bf16", "auto", "sgd", "adamw", "cosine", "standard",
         "fashion_mnist", "cpu", "cuda:7", "error", "skip", "../x", "~", "1e999"]
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
              st.sampled_from(NAMES), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(NAMES + ["weight", "x"]),
                                                                       inner, max_size=3)),
    max_leaves=6)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    import copy

    cfg = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = cfg
        for key in path[:-1]:
            if not isinstance(parent, dict) or not isinstance(parent.get(key), dict):
                parent = None
                break
            parent = parent[key]
        if parent is None:
            continue
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        if action == "delete":
            parent.pop(path[-1], None)
        elif action == "replace":
            parent[path[-1]] = draw(VALUES)
        else:
            parent[draw(st.sampled_from(NAMES + ["epoch", "lr"]))] = draw(VALUES)
    return cfg


def run_dry(text: str, overrides: list[str] = ()) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.yaml"
        path.write_text(text)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["train", str(path), *overrides, "--dry-run"])
    return rc, err.getvalue()


def check(rc: int, err: str) -> None:
    assert rc in (0, 2), err
    if rc == 2:
        lines = [line for line in err.splitlines() if line.startswith("adakd: error:")]
        assert len(lines) == 1 and len(lines[0]) > len("adakd: error: ") + 10, err
    assert "Traceback" not in err


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(mutated())
def test_mutated_config_files(cfg):
    check(*run_dry(yaml.safe_dump(cfg)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([".".join(p) for p in PATHS] + ["", "a..b", "train.x.y", "data"]),
                          st.sampled_from(["=", "", "=="]),
                          st.one_of(st.sampled_from(NAMES + ["[1, 2", "{a: 1}", "-1", "0", "null", "3.5"]),
                                    st.text(max_size=8))), max_size=3))
def test_mutated_overrides(overrides):
    check(*run_dry(yaml.safe_dump(BASE), [f"{k}{sep}{v}" for k, sep, v in overrides]))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 400), st.text(max_size=6))
def test_corrupted_yaml_text(position, garbage):
    text = yaml.safe_dump(BASE)
    check(*run_dry(text[:position] + garbage + text[position:]))


def test_the_base_config_is_valid():
    assert run_dry(yaml.safe_dump(BASE))[0] == 0
