"""The committed config zoo: every CIFAR-100 and Fashion-MNIST config loads and validates, the CIFAR-100
matrix is complete and up to date, and for every (method, pair) the models + loss build and one
forward/backward on random CIFAR-shaped input (batch 2, no data files) is finite."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from adakd.engine.components import check_names_and_options
from adakd.config import load_config
from adakd.losses.base import DistillContext
from adakd.losses.build import build_distiller
from adakd.models import build_model
from adakd.registry import DISTILLERS
from adakd.tools.report.published import PAIRS

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO / "configs" / "cifar100"
FMNIST = REPO / "configs" / "fashion_mnist"
OTHER_OWNERS = ("sakd", "abl")  # written and tested elsewhere
TABLES_STUDY = REPO / "studies" / "cifar100-tables"  # the generated sweep file of each table, in its study
CIFAR_TRAIN_SIZE = 50_000


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_cifar100_configs", REPO / "scripts" / "make_cifar100_configs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_cifar100_configs", module)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()
MATRIX = [(m, p) for m in GEN.METHODS for p in PAIRS if GEN.applies(m, p)]
#: One representative pair per method in the fast run (same family, equal widths: every method applies).
REPRESENTATIVE = "res56_res20"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cifar_files() -> list[Path]:
    skip = OTHER_OWNERS
    return sorted(p for p in CIFAR.rglob("*.yaml") if p.relative_to(CIFAR).parts[0] not in skip)


def test_generated_configs_are_up_to_date():
    """The committed files are exactly what scripts/make_cifar100_configs.py writes (edit the matrix, not them)."""
    expected = GEN.all_files()
    stale = [str(p.relative_to(REPO)) for p, text in expected.items() if not p.is_file() or p.read_text() != text]
    assert not stale, f"run python scripts/make_cifar100_configs.py; stale: {stale[:5]}"
    extra = sorted((set(cifar_files()) | set(TABLES_STUDY.glob("sweep_*.yaml"))) - set(expected))
    assert not extra, f"configs not produced by the generator: {extra}"


def test_table_sweeps_expand_to_the_tables_rows():
    """studies/cifar100-tables/sweep_<table>.yaml: pairs x methods (the Student row once per student, FSP only on
    equal widths) x seeds, every run from the published teacher."""
    from adakd.tools.sweep import load_sweep

    crd, dkd = load_sweep(TABLES_STUDY / "sweep_crd.yaml"), load_sweep(TABLES_STUDY / "sweep_dkd.yaml")
    assert len(crd.runs) == 3 * (13 * 15 - 7 - 4) and len(dkd.runs) == 5 * (11 * 8 - 2)
    assert {r.labels["method"] for r in dkd.runs} == {"scratch", "fitnet", "rkd", "crd", "ofd", "reviewkd", "kd", "dkd"}
    assert {r.labels["pair"] for r in dkd.runs} == set(PAIRS) - {"res110_res20", "res50_vgg8"}
    scratch = [r for r in crd.runs if r.labels["method"] == "scratch" and r.seed == 0]
    assert sorted(r.config["student"]["name"] for r in scratch) == sorted({s for _, s in PAIRS.values()})
    assert not [r for r in crd.runs if r.labels["method"] == "fsp" and r.labels["pair"] not in GEN.EQUAL_WIDTHS]
    for run in crd.runs + dkd.runs:
        if run.labels["method"] != "scratch":
            assert run.config["teacher"]["checkpoint"] == "published", run.name
        assert run.config["train"]["epochs"] == 240 and Path(run.run_dir).parts[-4:-1] == (
            "cifar100-tables", "runs", run.name.split("-")[1])


def test_matrix_covers_the_tables():
    methods = {"kd", "dkd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "crd", "crd_kd", "reviewkd"}
    assert methods <= set(GEN.METHODS)
    # every registered distiller has CIFAR-100 configs
    used = {name for _, losses, _ in GEN.METHODS.values() for name in losses}
    assert {e.name for e in DISTILLERS.entries()} <= used
    assert len(PAIRS) == 13
    assert all((CIFAR / "scratch" / f"{p}.yaml").is_file() for p in PAIRS)
    for method in GEN.METHODS:
        for pair in PAIRS:
            assert (CIFAR / method / f"{pair}.yaml").is_file() == GEN.applies(method, pair), (method, pair)


@pytest.mark.parametrize("path", cifar_files() + sorted(FMNIST.glob("*.yaml")),
                         ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_loads_and_validates(path):
    cfg = load_config(path)
    check_names_and_options(cfg)  # names and typed options; building each of them is test_one_step_representative
    if cfg.teacher is not None and cfg.teacher.recipe:
        recipe = load_config(cfg.teacher.recipe)
        assert recipe.student.name == cfg.teacher.name and not recipe.losses


def test_cifar_recipe_is_the_standard_one():
    for pair, (teacher, student) in PAIRS.items():
        cfg = load_config(CIFAR / "kd" / f"{pair}.yaml")
        t = cfg.train
        assert (cfg.data.name, cfg.data.batch_size, t.epochs, t.precision) == ("cifar100", 64, 240, "auto")
        assert (t.optimizer.name, t.optimizer.momentum, t.optimizer.weight_decay) == ("sgd", 0.9, 5e-4)
        assert (t.schedule.name, t.schedule.milestones, t.schedule.gamma) == ("multistep", [150, 180, 210], 0.1)
        assert t.optimizer.lr == (0.01 if student in ("MobileNetV2", "ShuffleV1", "ShuffleV2") else 0.05)
        assert (cfg.teacher.name, cfg.student.name) == (teacher, student)
        assert cfg.teacher.checkpoint == "published"  # the tables' teacher; the recipe is the fallback
        teacher_cfg = load_config(cfg.teacher.recipe)
        assert teacher_cfg.train.optimizer.lr == 0.05 and teacher_cfg.train.epochs == 240
        assert (cfg.ce_weight, cfg.losses["kd"]) == (0.1, {"weight": 0.9, "temperature": 4.0})


def test_dkd_betas_per_pair():
    beta = {p: load_config(CIFAR / "dkd" / f"{p}.yaml").losses["dkd"]["beta"] for p in PAIRS}
    assert beta["res56_res20"] == beta["res110_res32"] == 2.0
    assert beta["vgg13_vgg8"] == beta["vgg13_mv2"] == beta["wrn40_2_wrn16_2"] == beta["wrn40_2_wrn40_1"] == 6.0
    assert beta["wrn40_2_shv1"] == 6.0
    assert beta["res32x4_res8x4"] == beta["res50_mv2"] == beta["res110_res20"] == 8.0
    assert load_config(CIFAR / "aekt" / "vgg13_vgg8.yaml").losses["aekt"]["beta"] == 6.0
    cc = load_config(CIFAR / "cc" / "res56_res20.yaml").losses["cc"]
    assert cc["weight"] == 0.02 and cc.get("form", "crd_code") == "crd_code"


def test_every_distiller_is_listed_with_description_and_paper():
    for entry in DISTILLERS.entries():
        assert entry.description.strip(), entry.name
        assert entry.paper.strip(), entry.name


# ------------------------------------------------------------------ one step of every (method, pair)
_MODELS: dict[str, tuple] = {}


def pair_models(pair: str):
    """(teacher, student, teacher features) for ``pair``, built once per test session."""
    if pair not in _MODELS:
        t_name, s_name = PAIRS[pair]
        torch.manual_seed(0)
        teacher = build_model(t_name, num_classes=100).eval()
        student = build_model(s_name, num_classes=100)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            t_feats = teacher.forward_features(x)
        _MODELS[pair] = (teacher, student, x, t_feats)
    return _MODELS[pair]


def one_step(method: str, pair: str) -> None:
    cfg = load_config(CIFAR / method / f"{pair}.yaml")
    teacher, student, x, t_feats = pair_models(pair)
    student.train()
    student.zero_grad(set_to_none=True)
    distiller = build_distiller(cfg.losses, student, teacher, num_samples=CIFAR_TRAIN_SIZE)
    ctx = DistillContext(labels=torch.tensor([3, 71]), indices=torch.tensor([5, 40_000]), epoch=30,
                         step=30 * 781, epochs_total=240, progress=30.0)
    s_feats = student.forward_features(x)
    terms = distiller(s_feats, t_feats, ctx)
    loss = cfg.ce_weight * torch.nn.functional.cross_entropy(s_feats.logits, ctx.labels) + sum(terms.values())
    assert set(terms) and all(torch.isfinite(v) for v in terms.values()), (method, pair, terms)
    loss.backward()
    grads = [p.grad for p in [*student.parameters(), *distiller.parameters()] if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), (method, pair)
    if getattr(distiller, "pretrain_epochs", 0):
        s_feats = student.forward_features(x)
        pre = distiller.pretrain_loss(s_feats, t_feats, ctx)
        assert torch.isfinite(pre), (method, pair)
        pre.backward()


@pytest.mark.parametrize("method", list(GEN.METHODS))
def test_one_step_representative(method):
    one_step(method, REPRESENTATIVE)


@pytest.mark.slow
@pytest.mark.parametrize("method,pair", [mp for mp in MATRIX if mp[1] != REPRESENTATIVE],
                         ids=[f"{m}-{p}" for m, p in MATRIX if p != REPRESENTATIVE])
def test_one_step_full_matrix(method, pair):
    one_step(method, pair)
