"""SAKD (strategy "sakd"): the straight-through Gumbel sampler, the student loss against the standard
strategy and brute-force NumPy values, the grafted pass, BN statistics, adapters on the CIFAR zoo
pairs, composition errors, and tiny real Fashion-MNIST runs that learn and resume exactly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import adakd.losses  # noqa: F401  (registers every distiller)
from adakd.config import validate
from adakd.data import Batch
from adakd.engine.checkpoint import load_checkpoint
from adakd.engine.trainer import train
from adakd.errors import ConfigError
from adakd.losses.base import DistillContext
from adakd.losses.build import build_distiller
from adakd.models import build_model
from adakd.registry import STRATEGIES
from adakd.strategies import StrategyContext
from adakd.strategies.sakd_graft import GraftAdapters, Spot, check_adapters, frozen_bn_statistics, grafted_logits
from adakd.strategies.sakd_policy import straight_through_gumbel_softmax
from tiny_runs import Killed, apply_dotted, kill_after_steps

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def tiny_pair(student_widths=(8, 16, 16), teacher_widths=(16, 16, 32)):
    torch.manual_seed(0)
    s = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, widths=list(student_widths))
    t = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, widths=list(teacher_widths))
    t.eval()
    for p in t.parameters():
        p.requires_grad_(False)
    return s, t


def make_strategy(name, student, teacher, losses, options=None, ce_weight=1.0, num_samples=64):
    d = build_distiller(losses, student, teacher, num_samples=num_samples)
    ctx = StrategyContext(student=student, teacher=teacher, distiller=d, ce_weight=ce_weight, device=CPU,
                          precision="fp32", num_classes=10, options=dict(options or {}))
    return STRATEGIES.build(name, ctx)


def a_batch(n=16, seed=1, shape=(1, 28, 28)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Batch(x, y, torch.arange(n))


def np_log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_ce(logits, y):
    return float(-np_log_softmax(logits)[np.arange(len(y)), y].mean())


def np_attention(f):
    a = (np.abs(f) ** 2).mean(axis=1).reshape(f.shape[0], -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def np_kd(zs, zt, temp):
    ls, lt = np_log_softmax(zs / temp), np_log_softmax(zt / temp)
    return float((np.exp(lt) * (lt - ls)).sum(axis=1).mean() * temp**2)


def f64(t):
    return t.detach().double().numpy()


# ---------------------------------------------------------------------------------------------
# the sampler
# ---------------------------------------------------------------------------------------------
def test_gumbel_straight_through_is_hard_forward_and_soft_backward():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    noise = -torch.log(-torch.log(torch.rand(6, 4, 2, generator=g, dtype=torch.float64)))
    w = torch.randn(6, 4, 2, generator=g, dtype=torch.float64)
    tau = 5.0
    y = straight_through_gumbel_softmax(logits, tau, noise=noise)
    # forward: exactly one-hot, at argmax(logits + g)
    yn, ln, gn = f64(y), f64(logits), f64(noise)
    assert set(np.unique(yn)) <= {0.0, 1.0}
    np.testing.assert_array_equal(yn.sum(-1), 1.0)
    np.testing.assert_array_equal(yn.argmax(-1), (ln + gn).argmax(-1))
    # backward: the gradient of sum(w * softmax((l + g) / tau)), derived by hand
    (y * w).sum().backward()
    z = (ln + gn) / tau
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    wn = f64(w)
    expected = p * (wn - (p * wn).sum(-1, keepdims=True)) / tau
    np.testing.assert_allclose(f64(logits.grad), expected, rtol=1e-10, atol=1e-12)


def test_sampler_frequency_follows_softmax_and_generator_replays():
    logits = torch.tensor([[[1.0, 0.0]]]).expand(20000, 1, 2)
    gen = torch.Generator().manual_seed(0)
    a = straight_through_gumbel_softmax(logits, 5.0, gen)[..., 0]
    assert abs(a.mean().item() - 1 / (1 + np.exp(-1.0))) < 0.01  # P(a=1) = sigmoid(l0 - l1), whatever tau
    gen2 = torch.Generator().manual_seed(0)
    assert torch.equal(a, straight_through_gumbel_softmax(logits, 5.0, gen2)[..., 0])


def test_policy_starts_everywhere_for_same_family_only():
    s, t = tiny_pair()
    st = make_strategy("sakd", s, t, {"at": {}})
    assert st.same_family and st.spot_names == ["stage1", "stage2", "stage3", "logits"]
    bias = st.policy.linear.bias.detach().view(-1, 2)
    assert torch.all(bias[:, 0] - bias[:, 1] > 9.0)
    x = a_batch(8).x
    p = st.policy.distil_probability(t.forward_features(x).pooled, s.forward_features(x).pooled)
    assert torch.all(p > 0.99)
    cross = make_strategy("sakd", s, t, {"at": {}}, {"init_everywhere": False})
    assert torch.all(cross.policy.linear.bias.detach().abs() < 1.0)


# ---------------------------------------------------------------------------------------------
# the student loss
# ---------------------------------------------------------------------------------------------
def _sakd_student_loss(st, batch, masks):
    t = st.teacher_features(batch.x)
    s = st.student.forward_features(batch.x)
    ctx = DistillContext(labels=batch.y, indices=batch.index)
    return st.student_loss(s, t, masks, batch.y, ctx), s, t


@pytest.mark.parametrize("losses", [{"at": {}, "kd": {"temperature": 4.0}}, {"pkt": {}, "kd": {}},
                                    {"fitnet": {}, "kd": {}}])
def test_everywhere_equals_the_standard_strategy(losses):
    s, t = tiny_pair()
    torch.manual_seed(5)
    std = make_strategy("standard", s, t, losses, ce_weight=0.5)
    sakd = STRATEGIES.build("sakd", StrategyContext(student=s, teacher=t, distiller=std.distiller, ce_weight=0.5,
                                                    device=CPU, precision="fp32", num_classes=10,
                                                    options={"routing": "everywhere"}))
    batch = a_batch()
    expected, _, _ = std.compute_loss(batch, DistillContext(labels=batch.y, indices=batch.index))
    masks = sakd.distil_masks(sakd.decide(s.forward_features(batch.x), t.forward_features(batch.x)))
    assert masks.all()
    (loss, terms), _, _ = _sakd_student_loss(sakd, batch, masks)
    assert set(terms) == {"ce"} | set(losses)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


def test_nowhere_equals_cross_entropy():
    s, t = tiny_pair()
    st = make_strategy("sakd", s, t, {"at": {}, "kd": {}}, {"routing": "nowhere"}, ce_weight=0.7)
    batch = a_batch()
    masks = st.distil_masks(st.decide(s.forward_features(batch.x), t.forward_features(batch.x)))
    assert not masks.any()
    (loss, terms), sf, _ = _sakd_student_loss(st, batch, masks)
    assert set(terms) == {"ce"}
    assert abs(loss.item() - 0.7 * np_ce(f64(sf.logits), batch.y.numpy())) < 1e-5


def test_partial_routing_is_weighted_by_the_routed_fraction():
    """AT + automatic KD on hand-picked masks against a NumPy brute force on the subsets."""
    s, t = tiny_pair()
    st = make_strategy("sakd", s, t, {"at": {"weight": 1000.0}}, {"kd_weight": 0.9, "kd_temperature": 4.0})
    batch = a_batch(12)
    rng = np.random.default_rng(0)
    masks_np = rng.random((12, 4)) < 0.5
    masks_np[:, 1] = False  # nothing routed at stage 2
    masks_np[:, 2] = True  # everything routed at stage 3
    (loss, terms), sf, tf = _sakd_student_loss(st, batch, torch.from_numpy(masks_np))
    expected_at = 0.0
    for spot, stage in enumerate((1, 2, 3)):
        m = masks_np[:, spot]
        if m.any():
            a_s, a_t = np_attention(f64(sf.stages[stage])[m]), np_attention(f64(tf.stages[stage])[m])
            expected_at += 1000.0 * ((a_s - a_t) ** 2).mean() * m.sum() / 12
    m = masks_np[:, 3]
    expected_kd = 0.9 * np_kd(f64(sf.logits)[m], f64(tf.logits)[m], 4.0) * m.sum() / 12
    expected_ce = np_ce(f64(sf.logits), batch.y.numpy())
    assert abs(terms["at"].item() - expected_at) < 1e-4 * max(1.0, expected_at)
    assert abs(terms["kd"].item() - expected_kd) < 1e-5
    assert abs(loss.item() - (expected_ce + expected_at + expected_kd)) < 1e-4 * max(1.0, loss.item())


def test_distillation_losses_never_train_the_policy():
    s, t = tiny_pair()
    st = make_strategy("sakd", s, t, {"at": {}}, {"init_everywhere": False})
    batch = a_batch()
    sf, tf = s.forward_features(batch.x), st.teacher_features(batch.x)
    a = st.decide(sf, tf)
    assert a.requires_grad  # straight-through decisions carry the policy's gradient...
    loss, _ = st.student_loss(sf, tf, st.distil_masks(a), batch.y, DistillContext(labels=batch.y))
    loss.backward()
    assert all(p.grad is None for p in st.policy.parameters())  # ...but the student loss does not use it


# ---------------------------------------------------------------------------------------------
# the grafted pass
# ---------------------------------------------------------------------------------------------
def _graft_setup(student_name="resnet8", teacher_name="resnet8", losses=None):
    torch.manual_seed(0)
    if student_name == "resnet8":
        s, t = tiny_pair()
        shape = (1, 28, 28)
    else:  # a cross-family pair at CIFAR size
        s = build_model(student_name, num_classes=10, in_channels=3, image_size=32)
        t = build_model(teacher_name, num_classes=10, in_channels=3, image_size=32, widths=[8, 16, 16]).eval()
        for p in t.parameters():
            p.requires_grad_(False)
        shape = (3, 32, 32)
    st = make_strategy("sakd", s, t, losses or {"at": {}})
    return st, s, t, a_batch(6, shape=shape).x


@pytest.mark.parametrize("mode", ["running", "batch"])
@pytest.mark.parametrize("pair", [("resnet8", "resnet8", {"at": {}}), ("resnet8", "resnet8", {"pkt": {}}),
                                  ("MobileNetV2", "resnet8", {"fitnet": {}})])
def test_all_student_routing_is_the_students_forward(mode, pair):
    st, s, t, x = _graft_setup(*pair)
    s.train()
    for _ in range(2):  # non-trivial running statistics
        s(x + 1.0)
    with torch.no_grad():
        s.train(mode == "batch")
        own = s(x)
        s.train()
        n = len(st.spots)
        with frozen_bn_statistics(s, mode):
            z0 = grafted_logits(s, t, st.spots, st.adapters, torch.zeros(6, n), x)
            z1 = grafted_logits(s, t, st.spots, st.adapters, torch.ones(6, n), x)
    torch.testing.assert_close(z0, own.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z1, t(x).float(), rtol=1e-5, atol=1e-5)  # all-teacher: the teacher's forward


@pytest.mark.parametrize("mode", ["running", "batch"])
def test_grafted_pass_leaves_student_bn_statistics_and_weights_alone(mode):
    st, s, t, x = _graft_setup()
    st.options.graft_bn = mode
    s.train()
    before = {k: v.clone() for k, v in s.state_dict().items()}
    sf, tf = s.forward_features(x), st.teacher_features(x)
    after_forward = {k: v.clone() for k, v in s.state_dict().items()}
    a = st.decide(sf, tf)
    lp = st.policy_loss(x, torch.arange(6) % 10, sf, tf, a)
    st._step_policy(lp, torch.optim.SGD(s.parameters(), lr=0.1))
    assert all(torch.equal(after_forward[k], v) for k, v in s.state_dict().items())
    assert any(not torch.equal(before[k], after_forward[k]) for k in before if "running" in k)  # sanity
    assert all(p.grad is None for p in s.parameters())  # L_P reaches only the policy and adapters
    assert all(p.grad is not None for p in st.policy.parameters())
    assert s.training and all(m.training for m in s.modules())


def test_policy_loss_gamma_and_hinge_by_hand():
    st, s, t, x = _graft_setup()
    y = torch.arange(6) % 10
    sf, tf = s.forward_features(x), st.teacher_features(x)
    a = torch.zeros(6, len(st.spots))
    a[:2, -1] = 1.0  # 2 of 6 at the logits: hinge 6/2 - 2 = 1
    with torch.no_grad():
        with frozen_bn_statistics(s, "running"):
            z = grafted_logits(s, t, st.spots, st.adapters, a, x)
        lp = st.policy_loss(x, y, sf, tf, a)
    g, c = np_ce(f64(z), y.numpy()), np_ce(f64(sf.logits), y.numpy())
    scale = 2.0 if g > c else 0.5  # gamma = 2 for AT
    assert abs(lp.item() - (g * scale + 1.0)) < 1e-5


ZOO_PAIRS = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
             ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"),
             ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"),
             ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")]


@pytest.fixture(scope="module")
def zoo_shapes():
    names = sorted({n for pair in ZOO_PAIRS for n in pair})
    out = {}
    for n in names:
        with torch.device("meta"):  # shapes only: no weights initialised, no arithmetic
            out[n] = build_model(n, num_classes=100, in_channels=3, image_size=32).feature_shapes()
    return out


@pytest.mark.parametrize("teacher,student", ZOO_PAIRS)
def test_adapters_fit_every_cifar_zoo_pair(zoo_shapes, teacher, student):
    s, t = zoo_shapes[student], zoo_shapes[teacher]
    n = min(s.num_stages, t.num_stages)
    spots = [Spot("stage", k, k) for k in range(n + 1)] + [Spot("pooled"), Spot("logits")]
    adapters = GraftAdapters(spots, s, t)
    check_adapters(spots, adapters, s, t)  # raises ShapeError on a misfit
    assert len(adapters.to_teacher) == len(adapters.to_student) == n + 2


# ---------------------------------------------------------------------------------------------
# composition and options
# ---------------------------------------------------------------------------------------------
def test_composite_of_decomposable_losses_shares_spots():
    s, t = tiny_pair()
    st = make_strategy("sakd", s, t, {"at": {}, "sp": {}, "pkt": {}, "kd": {}})
    assert st.spot_names == ["stage1", "stage2", "stage3", "pooled", "logits"]
    assert st.gamma == 2.0 and st.kd is None
    out = st.train_step(a_batch(), DistillContext(labels=a_batch().y, indices=a_batch().index),
                        torch.optim.SGD([p for m in st.trainable_modules() for p in m.parameters()], lr=0.01))
    assert {"at", "sp", "pkt", "kd", "ce", "policy", "loss"} <= set(out)


@pytest.mark.parametrize("losses", [{"fsp": {}}, {"at": {}, "kdsvd": {}}])
def test_non_decomposable_loss_is_a_config_error(losses):
    s, t = tiny_pair(student_widths=(16, 16, 32))  # fsp and kdsvd need equal widths
    with pytest.raises(ConfigError, match="does not decompose"):
        make_strategy("sakd", s, t, losses)


def test_option_errors():
    s, t = tiny_pair()
    with pytest.raises(ConfigError, match="routing"):
        make_strategy("sakd", s, t, {"at": {}}, {"routing": "sometimes"})
    with pytest.raises(ConfigError, match="temprature: unknown option. Did you mean 'temperature'"):
        make_strategy("sakd", s, t, {"at": {}}, {"temprature": 3})
    with pytest.raises(ConfigError, match="policy_momentum"):
        make_strategy("sakd", s, t, {"at": {}}, {"policy_momentum": 1.5})
    with pytest.raises(ConfigError, match="kd_weight"):
        make_strategy("sakd", s, t, {"at": {}, "kd": {}}, {"kd_weight": 0.5})


def test_random_control_needs_no_policy_and_is_replayable():
    s, t = tiny_pair()
    st = make_strategy("sakd", s, t, {"pkt": {}}, {"routing": "random"})
    sf, tf = s.forward_features(a_batch().x), t.forward_features(a_batch().x)
    state = st.generator.get_state()
    a = st.decide(sf, tf)
    st.generator.set_state(state)
    assert torch.equal(a, st.decide(sf, tf)) and not a.requires_grad
    rev = make_strategy("sakd", s, t, {"pkt": {}}, {"routing": "reverse"})
    a = rev.decide(sf, tf)
    assert torch.equal(rev.distil_masks(a), a < 0.5)


# ---------------------------------------------------------------------------------------------
# tiny real Fashion-MNIST runs
# ---------------------------------------------------------------------------------------------
def tiny_config(tmp_path: Path, root: Path, teacher_dir: str | None = None, **updates) -> dict:
    cfg = {
        "name": "tiny", "seed": 0, "device": "cpu", "output_dir": str(tmp_path / "runs"), "progress": False,
        "data": {"name": "fashion_mnist", "root": str(root), "batch_size": 32, "eval_batch_size": 500,
                 "train_subset": 256, "test_subset": 1000},
        "student": {"name": "resnet8", "kwargs": {"widths": [8, 16, 16]}},
        "train": {"epochs": 2, "precision": "fp32", "channels_last": False,
                  "optimizer": {"lr": 0.05}, "schedule": {"name": "cosine"}},
    }
    if teacher_dir:
        cfg["teacher"] = {"name": "resnet8", "kwargs": {"widths": [16, 16, 32]}, "checkpoint": teacher_dir}
    return apply_dotted(cfg, updates)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, fmnist_root):
    tmp = tmp_path_factory.mktemp("sakd-teacher")
    cfg = tiny_config(tmp, fmnist_root, name="teacher", **{"student.kwargs.widths": [16, 16, 32], "train.epochs": 2,
                                                           "data.train_subset": 512, "train.optimizer.lr": 0.1})
    return train(validate(cfg), log=lambda m: None)["run_dir"]


@pytest.mark.parametrize("losses,options", [({"at": {"weight": 100.0}}, {}), ({"pkt": {}}, {"init_everywhere": False})])
def test_fmnist_sakd_learns_and_resumes_exactly(tmp_path, fmnist_root, teacher_dir, monkeypatch, losses, options):
    updates = {"losses": losses, "strategy": {"name": "sakd", "options": options},
               "train.checkpoint_every_steps": 3, "train.optimizer.lr": 0.2, "data.test_subset": 500}
    straight = train(validate(tiny_config(tmp_path / "a", fmnist_root, teacher_dir, **updates)), log=lambda m: None)
    d = Path(straight["run_dir"])
    metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    routes = [k for k in metrics[0] if k.startswith("route_teacher.")]
    assert routes and all(0.0 <= metrics[-1][k] <= 1.0 for k in routes) and "policy" in metrics[0]
    # learned: in 16 steps the training CE falls by > 10% and the training top-1 is twice chance (10%). (The test
    # top-1 is no check this early: with PKT the eval-mode student still predicts one class, 10.0%, after 16 steps.)
    assert metrics[-1]["ce"] < 0.9 * metrics[0]["ce"] and metrics[-1]["train_top1"] > 20.0
    routing = json.loads((d / "sakd_routing.json").read_text())
    assert len(routing["per_class"]) == 10 and routing["spots"] == [k.split(".", 1)[1] for k in routes]
    assert straight["sakd_routing"]["overall"] == routing["overall"]
    exported = load_checkpoint(d / "checkpoints" / "student.pt")["model"]
    assert not any(k.startswith(("policy", "adapters", "linear", "to_teacher")) for k in exported)
    assert set(exported) == set(build_model("resnet8", num_classes=10, in_channels=1, image_size=28,
                                            widths=[8, 16, 16]).state_dict())
    state = load_checkpoint(d / "checkpoints" / "last.pt")["strategy"]
    assert {"policy", "adapters", "policy_optimizer", "generator"} <= set(state)

    cfg = validate(tiny_config(tmp_path / "b", fmnist_root, teacher_dir, **updates))
    # epoch 2: die after 5 of its 8 steps (last step checkpoint at 3 + 1)
    restore = kill_after_steps(monkeypatch, 5, lambda phase, call: call == 2)
    with pytest.raises(Killed):
        train(cfg, log=lambda m: None)
    restore()
    resumed = train(cfg.model_copy(update={"resume": True}), log=lambda m: None)
    r = Path(resumed["run_dir"])
    a, b = exported, load_checkpoint(r / "checkpoints" / "student.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = load_checkpoint(d / "checkpoints" / "last.pt")["strategy"]
    sb = load_checkpoint(r / "checkpoints" / "last.pt")["strategy"]
    assert all(torch.equal(sa["policy"][k], sb["policy"][k]) for k in sa["policy"])
    resumed_metrics = [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()]
    assert [m[k] for m in resumed_metrics for k in routes] == [m[k] for m in metrics for k in routes]
    assert len(resumed_metrics) == 2
    assert resumed["last_top1"] == straight["last_top1"]
