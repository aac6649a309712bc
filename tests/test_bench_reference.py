"""``adakd bench --against reference``: the reference code base's step (mdistiller) beside ours.

No reference ships with adakd, so: the message when it is absent; a tiny FAKE checkout written here in
mdistiller's layout (``mdistiller/distillers``, ``mdistiller/models``, ``mdistiller/engine/cfg.py``) that
runs the whole path in seconds; the real checkout only when ``$ADAKD_REFERENCE_PATH`` names one.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from adakd.cli import main
from adakd.errors import ConfigError
from adakd.runtime.device import cpu_info
from adakd.tools.bench import BenchSettings, run_against_reference
from adakd.tools.bench.environment import cpu_class
from adakd.tools.bench.reference import REFERENCE_METHODS, cuda_to, load_reference

REPO = Path(__file__).resolve().parents[1]

FAKE_FILES = {
    "mdistiller/__init__.py": "",
    # mdistiller's real engine/__init__ imports the trainer (tensorboardX, wandb): the bench must not run it.
    "mdistiller/engine/__init__.py": "raise ImportError('the bench imported mdistiller.engine.__init__')\n",
    "mdistiller/engine/cfg.py": """
        import copy
        from types import SimpleNamespace


        class Node(SimpleNamespace):
            def clone(self):
                return copy.deepcopy(self)

            def merge_from_file(self, path):
                raise AssertionError("the fake checkout has no configs/")


        CFG = Node(DISTILLER=Node(TYPE="NONE", TEACHER="", STUDENT=""),
                   SOLVER=Node(LR=0.05, MOMENTUM=0.9, WEIGHT_DECAY=5e-4),
                   KD=Node(TEMPERATURE=4, CE_WEIGHT=0.1, KD_WEIGHT=0.9))
    """,
    "mdistiller/models/__init__.py": """
        import torch.nn as nn


        class Tiny(nn.Module):  # mdistiller's models return (logits, features)
            def __init__(self, num_classes):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3, padding=1)
                self.fc = nn.Linear(4, num_classes)

            def forward(self, x):
                f = self.conv(x).relu().mean((2, 3))
                return self.fc(f), {"pooled_feat": f}


        cifar_model_dict = {"resnet8": (Tiny, None)}
    """,
    "mdistiller/distillers/__init__.py": "from .KD import KD\n\ndistiller_dict = {'KD': KD}\n",
    "mdistiller/distillers/KD.py": """
        import torch
        import torch.nn as nn
        import torch.nn.functional as F


        INSTANCES = []


        class KD(nn.Module):
            def __init__(self, student, teacher, cfg):
                super().__init__()
                INSTANCES.append(self)
                self.student, self.teacher, self.t = student, teacher, cfg.KD.TEMPERATURE
                self.ce_weight, self.kd_weight = cfg.KD.CE_WEIGHT, cfg.KD.KD_WEIGHT
                self.register_buffer("calls", torch.zeros(()).cuda())  # as mdistiller's CRD does: .cuda()

            def get_learnable_parameters(self):
                return list(self.student.parameters())

            def forward(self, **kwargs):
                return self.forward_train(**kwargs)

            def forward_train(self, image, target, **kwargs):
                self.calls += 1
                logits_s, _ = self.student(image)
                with torch.no_grad():
                    logits_t, _ = self.teacher(image)
                kd = F.kl_div(F.log_softmax(logits_s / self.t, 1), F.softmax(logits_t / self.t, 1),
                              reduction="batchmean") * self.t ** 2
                return logits_s, {"loss_ce": self.ce_weight * F.cross_entropy(logits_s, target),
                                  "loss_kd": self.kd_weight * kd}
    """,
}

OUR_KD = """
    data: {name: cifar100}
    teacher: {name: resnet8}
    student: {name: resnet8}
    ce_weight: 0.1
    losses: {kd: {weight: 0.9, temperature: 4.0}}
"""

TINY_ARGS = ["--teacher", "resnet8", "--student", "resnet8", "--teacher-kwargs", "{widths: [8, 8, 16]}",
             "--student-kwargs", "{widths: [4, 8, 8]}", "--num-classes", "10", "--image-size", "16",
             "--batch-size", "8", "--threads", "1", "--device", "cpu", "--precision", "fp32", "--channels-last",
             "false", "--warmup", "1", "--windows", "2"]


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


@pytest.fixture(autouse=True)
def forget_mdistiller():
    """Each test imports its own checkout: drop the previous one's modules."""
    yield
    for name in [n for n in sys.modules if n == "mdistiller" or n.startswith("mdistiller.")]:
        del sys.modules[name]


@pytest.fixture
def fake(tmp_path):
    ref = write_tree(tmp_path / "mdistiller-checkout", FAKE_FILES)
    configs = write_tree(tmp_path / "configs", {"kd/resnet8_resnet8.yaml": OUR_KD})
    return ref, configs


def test_without_a_reference_one_message_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ADAKD_REFERENCE_PATH", raising=False)
    assert main(["bench", "--against", "reference"]) == 2
    err = capsys.readouterr().err
    assert err.count("adakd: error:") == 1 and "--reference-path" in err and "megvii-research/mdistiller" in err
    assert main(["bench", "--against", "reference", "--reference-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--reference-path {tmp_path}: not an mdistiller checkout" in err


def test_a_missing_dependency_of_the_reference_is_named(fake):
    ref, _ = fake
    (ref / "mdistiller/distillers/__init__.py").write_text("import yacs_not_installed_here\n")
    with pytest.raises(ConfigError, match="module 'yacs_not_installed_here' is missing"):
        load_reference(ref)


def test_fake_reference_whole_path(fake, tmp_path, capsys):
    ref, configs = fake
    out = tmp_path / "against.json"
    rc = main(["bench", "--against", "reference", "--reference-path", str(ref), "--configs", str(configs),
               "--methods", "kd", "--out", str(out), *TINY_ARGS])
    assert rc == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    [record] = result["results"]
    assert "skipped" not in record, record
    assert record["method"] == "kd" and record["reference_type"] == "KD" and record["batch_size"] == 8
    ours, reference = record["ours"], record["reference"]
    assert ours["losses"] == {"kd": {"weight": 0.9, "temperature": 4.0}} and ours["ce_weight"] == 0.1
    assert (ours["precision"], ours["channels_last"]) == ("fp32", False)
    for side in (ours, reference):
        ips = side["images_per_s"]
        assert 0 < ips["min"] <= ips["q1"] <= ips["median"] <= ips["q3"] <= ips["max"]
        assert side["mean_loss"] > 0
    assert record["ratio"] == pytest.approx(ours["images_per_s"]["median"] / reference["images_per_s"]["median"])
    env = result["environment"]
    assert env["cpu_class"] == cpu_class(cpu_info()) and env["cpu"] == cpu_info()["model"]
    assert env["torch_threads"] == 1 and result["settings"]["repeats"] == 2
    assert result["reference"]["path"] == str(ref.resolve())
    assert f"CPU class {env['cpu_class']}" in table and "1 torch threads" in table
    assert f"{record['ratio']:.2f}x" in table.splitlines()[-1] and table.splitlines()[-1].startswith("kd")


def test_reference_steps_are_counted_and_cuda_is_restored(fake):
    ref, configs = fake
    cuda_before = torch.Tensor.cuda, nn.Module.cuda
    settings = BenchSettings(teacher="resnet8", student="resnet8", teacher_kwargs={"widths": [8, 8, 16]},
                             student_kwargs={"widths": [4, 8, 8]}, num_classes=10, image_size=16, dataset_size=32,
                             batch_sizes=[8], device="cpu", precision="fp32", channels_last=False, warmup=1,
                             repeats=3, window=2, threads=1)
    result = run_against_reference(settings, ["kd"], str(ref), configs)
    [record] = result["results"]
    assert record["ratio"] > 0
    # the reference really stepped: (1 warm-up + 3 timed windows) x 2 steps; its .cuda() became .to(cpu)
    [distiller] = sys.modules["mdistiller.distillers.KD"].INSTANCES
    assert int(distiller.calls) == 8 and distiller.calls.device.type == "cpu"
    assert (torch.Tensor.cuda, nn.Module.cuda) == cuda_before
    with cuda_to(torch.device("cpu")):
        assert torch.ones(2).cuda().device.type == "cpu"
    assert (torch.Tensor.cuda, nn.Module.cuda) == cuda_before


def test_unknown_method_and_missing_config_of_ours(fake):
    ref, configs = fake
    settings = BenchSettings(teacher="resnet8", student="resnet8", device="cpu")
    with pytest.raises(ConfigError, match="--methods mystery: no reference counterpart"):
        run_against_reference(settings, ["mystery"], str(ref), configs)
    settings = BenchSettings(teacher="resnet8", student="resnet8", num_classes=10, image_size=16, dataset_size=32,
                             batch_sizes=[8], device="cpu", precision="fp32", channels_last=False, warmup=0,
                             repeats=1, threads=1)
    [record] = run_against_reference(settings, ["dkd"], str(ref), configs)["results"]
    assert record["skipped"].startswith("ours: ConfigError: no config of ours for dkd")


@pytest.mark.parametrize("flags, capability, limits, expected", [
    ({"amx_bf16": True, "avx512_bf16": True, "avx512f": True, "avx2": True}, "AVX512", {}, "amx_bf16"),
    ({"amx_bf16": False, "avx512_bf16": True, "avx512f": True, "avx2": True}, "AVX512", {}, "avx512_bf16"),
    ({"amx_bf16": False, "avx512_bf16": False, "avx512f": False, "avx2": True}, "AVX2", {}, "avx2"),
    ({"amx_bf16": False, "avx512_bf16": False, "avx512f": True, "avx2": True}, "AVX512", {}, "AVX512"),
    ({"amx_bf16": True, "avx512_bf16": True, "avx512f": True, "avx2": True}, "AVX2",
     {"ATEN_CPU_CAPABILITY": "avx2"}, "capped: AVX2"),
])
def test_cpu_class(flags, capability, limits, expected):
    assert cpu_class({"flags": flags, "capability": capability, "isa_limits": limits}) == expected


@pytest.mark.skipif(not os.environ.get("ADAKD_REFERENCE_PATH"), reason="set ADAKD_REFERENCE_PATH to an mdistiller checkout")
def test_real_reference_every_method_steps():
    """Every mapped method builds and steps on both sides (batch 8, one window each: about a minute)."""
    settings = BenchSettings(batch_sizes=[8], device="cpu", precision="fp32", channels_last=False, warmup=0,
                             repeats=1, threads=1)
    result = run_against_reference(settings, list(REFERENCE_METHODS), os.environ["ADAKD_REFERENCE_PATH"],
                                   REPO / "configs" / "cifar100")
    for record in result["results"]:
        assert "skipped" not in record, record
        assert record["reference"]["images_per_s"]["median"] > 0 and record["ratio"] > 0
    assert [r["reference_type"] for r in result["results"]] == [kind for kind, _ in REFERENCE_METHODS.values()]
