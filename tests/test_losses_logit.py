"""Logit distillers KD, LS, DKD, DIST, AEKT: golden values against NumPy float64
re-derivations of the papers' formulas, numerical edge cases, gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adakd.errors import ConfigError, ShapeError
from adakd.losses.aekt import AEKT, aekt_loss
from adakd.losses.base import DistillContext
from adakd.losses.dist import DIST
from adakd.losses.dkd import DKD
from adakd.losses.kd import KD, LogitStandardizedKD
from adakd.models.contract import Features, FeatureShapes
from adakd.registry import DISTILLERS

# many tiny ops (gradchecks): one thread, so a busy machine's OpenMP barriers do not stall them 100x
pytestmark = pytest.mark.usefixtures("one_torch_thread")

B, C = 6, 5


# -- NumPy float64 references (the papers' formulas, written independently) -----------
def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise KL(p || q) for strictly positive distributions."""
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def np_kd(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    return float(temp**2 * np_kl(np_softmax(t / temp), np_softmax(s / temp)).mean())


def np_zscore(z: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    return (z - z.mean(axis=1, keepdims=True)) / (z.std(axis=1, keepdims=True) + eps)


def np_binary(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[p_t, sum of the other probabilities] per row."""
    p_t = p[np.arange(len(y)), y]
    others = np.array([p[i].sum() - p[i, y[i]] for i in range(len(y))])
    return np.stack([p_t, others], axis=1)


def np_non_target(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p_j / (1 - p_t) over j != t (DKD's p-hat), from the full softmax."""
    rows = [np.delete(p[i], y[i]) for i in range(len(y))]
    return np.stack([r / r.sum() for r in rows])


def np_tckd(s, t, y, temp):
    ps, pt = np_softmax(s / temp), np_softmax(t / temp)
    return float(temp**2 * np_kl(np_binary(pt, y), np_binary(ps, y)).mean())


def np_nckd(s, t, y, temp):
    ps, pt = np_softmax(s / temp), np_softmax(t / temp)
    return float(temp**2 * np_kl(np_non_target(pt, y), np_non_target(ps, y)).mean())


def np_tckd_log_space(s, t, y, temp):
    """TCKD from log p_t = z_t - logsumexp(z), log(1 - p_t) = logsumexp(z_j, j != t) - logsumexp(z)."""
    def logs(z):
        z = z / temp
        lse = np.logaddexp.reduce(z, axis=1)
        log_t = z[np.arange(len(y)), y] - lse
        log_not = np.array([np.logaddexp.reduce(np.delete(z[i], y[i])) for i in range(len(y))]) - lse
        return log_t, log_not
    s_t, s_not = logs(s)
    t_t, t_not = logs(t)
    kl = np.exp(t_t) * (t_t - s_t) + np.exp(t_not) * (t_not - s_not)
    return float(temp**2 * kl.mean())


def np_pearson_mean(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(a[i], b[i])[0, 1] for i in range(a.shape[0])]))


def np_aekt(s, t, y, temp, w_max):
    ps, pt = np_softmax(s / temp), np_softmax(t / temp)
    idx = np.arange(len(y))
    w = np.minimum(pt[idx, y] / ps[idx, y], w_max)
    return float(-(temp**2) * np.mean(w * np.log(ps[idx, y])))


# -- fixtures ------------------------------------------------------------------------------
def shapes(c: int = C) -> FeatureShapes:
    return FeatureShapes(stages=[], pooled=c, num_classes=c)


def feats(logits: torch.Tensor) -> Features:
    return Features(logits=logits, stages=[], preact_stages=[], pooled=logits)


def data(seed: int = 0, b: int = B, c: int = C, scale: float = 3.0):
    rng = np.random.RandomState(seed)
    s = rng.randn(b, c) * scale
    t = rng.randn(b, c) * scale
    y = rng.randint(0, c, size=b)
    return s, t, y


def ctx_for(y, progress: float = 100.0) -> DistillContext:
    return DistillContext(labels=torch.as_tensor(y, dtype=torch.long), progress=progress)


def to32(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# -- registry --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["kd", "ls", "dkd", "dist", "aekt"])
def test_registered_as_logit_distillers(name):
    entry = DISTILLERS.get(name)
    assert entry.extra["spot_kind"] == "logits"
    assert entry.paper


# -- KD and LS ---------------------------------------------------------------------------------
def test_kd_golden():
    s, t, y = data(1)
    loss = KD(shapes(), shapes(), weight=1.0, temperature=4.0)(feats(to32(s)), feats(to32(t)), ctx_for(y))
    assert loss["kd"].item() == pytest.approx(np_kd(s, t, 4.0), rel=1e-5)


def test_kd_default_weight_scales():
    s, t, y = data(2)
    loss = KD(shapes(), shapes())(feats(to32(s)), feats(to32(t)), ctx_for(y))
    assert loss["kd"].item() == pytest.approx(0.9 * np_kd(s, t, 4.0), rel=1e-5)


def test_ls_default_weight_is_the_papers():
    s, t, y = data(2)
    loss = LogitStandardizedKD(shapes(), shapes())(feats(to32(s)), feats(to32(t)), ctx_for(y))
    assert loss["ls"].item() == pytest.approx(9.0 * np_kd(np_zscore(s), np_zscore(t), 2.0), rel=1e-5)


def test_ls_golden():
    s, t, y = data(3)
    s = s * 5 + 2  # standardisation must remove scale and shift
    loss = LogitStandardizedKD(shapes(), shapes(), weight=1.0)(feats(to32(s)), feats(to32(t)), ctx_for(y))
    assert loss["ls"].item() == pytest.approx(np_kd(np_zscore(s), np_zscore(t), 2.0), rel=1e-5)


# -- DKD ------------------------------------------------------------------------------------------
def test_dkd_terms_golden():
    s, t, y = data(4)
    dkd = DKD(shapes(), shapes(), alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20)
    terms = dkd(feats(to32(s)), feats(to32(t)), ctx_for(y, progress=25.0))
    assert set(terms) == {"tckd", "nckd"}
    assert terms["tckd"].item() == pytest.approx(np_tckd(s, t, y, 4.0), rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(8.0 * np_nckd(s, t, y, 4.0), rel=1e-5)


def test_dkd_weights_and_temperature():
    s, t, y = data(5)
    dkd = DKD(shapes(), shapes(), weight=0.5, alpha=2.0, beta=3.0, temperature=2.0, warmup_epochs=0)
    terms = dkd(feats(to32(s)), feats(to32(t)), ctx_for(y, progress=0.0))
    assert terms["tckd"].item() == pytest.approx(0.5 * 2.0 * np_tckd(s, t, y, 2.0), rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(0.5 * 3.0 * np_nckd(s, t, y, 2.0), rel=1e-5)
    spot = dkd.spot_loss(0, to32(s), to32(t), ctx_for(y, progress=0.0))
    assert spot.item() == pytest.approx((terms["tckd"] + terms["nckd"]).item(), rel=1e-6)


def test_dkd_by_hand_two_classes():
    # teacher p = [3/4, 1/4], student p = [1/2, 1/2], label 0, T = 1:
    # TCKD = 3/4 ln(3/2) + 1/4 ln(1/2); NCKD = 0 (one non-target class)
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    dkd = DKD(shapes(2), shapes(2), temperature=1.0, warmup_epochs=0)
    terms = dkd(feats(s), feats(t), ctx_for([0]))
    assert terms["tckd"].item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-6)
    assert terms["nckd"].item() == 0.0


@pytest.mark.parametrize("progress, scale", [(0.0, 0.0), (10.0, 0.5), (20.0, 1.0), (30.0, 1.0)])
def test_dkd_warmup(progress, scale):
    s, t, y = data(6)
    dkd = DKD(shapes(), shapes(), warmup_epochs=20)
    terms = dkd(feats(to32(s)), feats(to32(t)), ctx_for(y, progress=progress))
    assert terms["tckd"].item() == pytest.approx(scale * np_tckd(s, t, y, 4.0), rel=1e-5, abs=1e-12)
    assert terms["nckd"].item() == pytest.approx(scale * 8.0 * np_nckd(s, t, y, 4.0), rel=1e-5, abs=1e-12)


# -- edge cases: 2 classes, extreme logits, bf16, empty subsets ---------------------------------------
def _logit_distillers(c: int):
    return [DKD(shapes(c), shapes(c), warmup_epochs=0),
            AEKT(shapes(c), shapes(c), warmup_epochs=0),
            AEKT(shapes(c), shapes(c), warmup_epochs=0, drop_gradient_factor=True)]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_two_classes_finite_and_nckd_zero(which):
    s, t, y = data(7, b=8, c=2, scale=5.0)
    d = _logit_distillers(2)[which]
    s_t = to32(s).requires_grad_(True)
    terms = d(feats(s_t), feats(to32(t)), ctx_for(y))
    assert terms["nckd"].item() == 0.0
    total = sum(terms.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s_t.grad).all()
    assert terms["tckd"].item() == pytest.approx(np_tckd(s, t, y, 4.0), rel=1e-5)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_extreme_logits_finite_fp32(which):
    # 1e4 differences: every softmax probability but one underflows in float32
    s = torch.tensor([[1e4, 0.0, -1e4, 0.0], [-1e4, 1e4, 0.0, 5.0], [0.0, 0.0, 0.0, 1e4]])
    t = torch.tensor([[-1e4, 1e4, 0.0, 3.0], [1e4, -1e4, 2.0, 0.0], [1e4, 0.0, -1e4, 0.0]])
    y = [1, 0, 0]
    d = _logit_distillers(4)[which]
    s_req = s.clone().requires_grad_(True)
    terms = d(feats(s_req), feats(t), ctx_for(y))
    total = sum(terms.values())
    total.backward()
    assert all(torch.isfinite(v) for v in terms.values()), terms
    assert torch.isfinite(s_req.grad).all()
    # against a float64 log-space re-derivation (the plain softmax underflows even in float64)
    assert terms["tckd"].item() == pytest.approx(np_tckd_log_space(s.double().numpy(), t.double().numpy(), y, 4.0),
                                                 rel=1e-5)


def test_extreme_two_classes_finite():
    s = torch.tensor([[1e4, -1e4], [-1e4, 1e4]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4], [1e4, -1e4]])
    for d in _logit_distillers(2):
        terms = d(feats(s), feats(t), ctx_for([0, 0]))
        total = sum(terms.values())
        grad, = torch.autograd.grad(total, s)
        assert torch.isfinite(total) and torch.isfinite(grad).all()
        assert terms["nckd"].item() == 0.0  # one non-target class (a -1000 mask would leak here)


def test_bf16_autocast_computes_in_float32():
    s, t, y = data(8)
    s16, t16 = to32(s).bfloat16(), to32(t).bfloat16()
    for d in [DKD(shapes(), shapes(), warmup_epochs=0), AEKT(shapes(), shapes(), warmup_epochs=0),
              DIST(shapes(), shapes())]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = d(feats(s16), feats(t16), ctx_for(y))
        ref = d(feats(s16.float()), feats(t16.float()), ctx_for(y))
        for name, value in terms.items():
            assert value.dtype == torch.float32, name
            assert value.item() == pytest.approx(ref[name].item(), rel=1e-6), name


def test_empty_subset_gives_zero():
    empty = torch.zeros(0, C)
    ctx = ctx_for(np.zeros(0, dtype=np.int64))
    for d in [DKD(shapes(), shapes()), AEKT(shapes(), shapes()), DIST(shapes(), shapes())]:
        value = d.spot_loss(0, empty, empty, ctx)
        assert value.item() == 0.0


# -- DIST --------------------------------------------------------------------------------------------
def test_dist_golden():
    s, t, y = data(9)
    temp = 4.0
    d = DIST(shapes(), shapes(), beta=2.0, gamma=3.0, temperature=temp)
    terms = d(feats(to32(s)), feats(to32(t)), ctx_for(y))
    ps, pt = np_softmax(s / temp), np_softmax(t / temp)
    inter = temp**2 * (1 - np_pearson_mean(ps, pt))
    intra = temp**2 * (1 - np_pearson_mean(ps.T, pt.T))
    assert terms["dist_inter"].item() == pytest.approx(2.0 * inter, rel=1e-4)
    assert terms["dist_intra"].item() == pytest.approx(3.0 * intra, rel=1e-4)


def test_dist_defaults_and_identical_inputs():
    s, _, y = data(10)
    d = DIST(shapes(), shapes())
    assert (d.beta, d.gamma, d.temperature) == (1.0, 1.0, 1.0)
    terms = d(feats(to32(s)), feats(to32(s)), ctx_for(y))
    assert abs(terms["dist_inter"].item()) < 1e-5 and abs(terms["dist_intra"].item()) < 1e-5


def test_dist_batch_of_one_is_finite():
    s = torch.randn(1, C, requires_grad=True)
    terms = DIST(shapes(), shapes())(feats(s), feats(torch.randn(1, C)), ctx_for([0]))
    total = sum(terms.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s.grad).all()
    assert terms["dist_intra"].item() == pytest.approx(1.0)  # no intra-class relation in one sample


# -- AEKT ----------------------------------------------------------------------------------------------
def test_aekt_terms_golden_through_serializer():
    s, t, y = data(11)
    rng = np.random.RandomState(12)
    w = np.eye(C) + 0.3 * rng.randn(C, C)
    bias = 0.5 * rng.randn(C)
    d = AEKT(shapes(), shapes(), temperature=4.0, alpha=1.5, beta=8.0, aekt_weight=0.7, w_max=10.0)
    with torch.no_grad():
        d.serializer.weight.copy_(to32(w))
        d.serializer.bias.copy_(to32(bias))
    terms = d(feats(to32(s)), feats(to32(t)), ctx_for(y, progress=40.0))
    z = s @ w.T + bias  # serialized student logits
    assert set(terms) == {"tckd", "nckd", "aekt"}
    assert terms["tckd"].item() == pytest.approx(1.5 * np_tckd(z, t, y, 4.0), rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(8.0 * np_nckd(z, t, y, 4.0), rel=1e-5)
    assert terms["aekt"].item() == pytest.approx(0.7 * np_aekt(z, t, y, 4.0, 10.0), rel=1e-5)


def test_aekt_weight_clamp_and_warmup_on_all_terms():
    s, t, y = data(13)
    d = AEKT(shapes(), shapes(), w_max=0.5, warmup_epochs=20)
    full = d(feats(to32(s)), feats(to32(t)), ctx_for(y, progress=20.0))
    half = d(feats(to32(s)), feats(to32(t)), ctx_for(y, progress=10.0))
    assert full["aekt"].item() == pytest.approx(np_aekt(s, t, y, 4.0, 0.5), rel=1e-5)
    for name in ("tckd", "nckd", "aekt"):
        assert half[name].item() == pytest.approx(0.5 * full[name].item(), rel=1e-6)


def test_aekt_starts_as_dkd():
    s, t, y = data(14)
    a = AEKT(shapes(), shapes())
    assert torch.equal(a.serializer.weight, torch.eye(C)) and torch.equal(a.serializer.bias, torch.zeros(C))
    dkd = DKD(shapes(), shapes())
    for progress in (5.0, 30.0):
        ta = a(feats(to32(s)), feats(to32(t)), ctx_for(y, progress))
        td = dkd(feats(to32(s)), feats(to32(t)), ctx_for(y, progress))
        assert ta["tckd"].item() == pytest.approx(td["tckd"].item(), rel=1e-6)
        assert ta["nckd"].item() == pytest.approx(td["nckd"].item(), rel=1e-6)


def test_aekt_switches_and_no_serializer():
    s, t, y = data(15)
    d = AEKT(shapes(), shapes(), serialize=False, use_tckd=False, use_nckd=False)
    assert d.serializer is None and list(d.parameters()) == []
    terms = d(feats(to32(s)), feats(to32(t)), ctx_for(y))
    assert set(terms) == {"aekt"}
    assert terms["aekt"].item() == pytest.approx(np_aekt(s, t, y, 4.0, 10.0), rel=1e-5)
    with pytest.raises(ConfigError):
        d.class_relations()


def _as_function(d: AEKT, t: torch.Tensor, ctx: DistillContext):
    def f(s, weight, bias):
        params = {"serializer.weight": weight, "serializer.bias": bias}
        terms = torch.func.functional_call(d, params, (feats(s), feats(t), ctx))
        return sum(terms.values())
    return f


@pytest.mark.parametrize("use_aekt", [False, True])
def test_aekt_gradcheck_float64(use_aekt):
    s, t, y = data(16, b=4, c=4, scale=1.0)
    rng = np.random.RandomState(17)
    w = np.eye(4) + 0.2 * rng.randn(4, 4)
    bias = 0.1 * rng.randn(4)
    w_max = 10.0
    if use_aekt:
        # w_max below every ratio p_t^T / p_t^S: the clamp is active, so w is constant and the
        # stop-gradient does not change the derivative (finite differences then agree with autograd).
        t[np.arange(4), y] += 12.0
        w_max = 1.0
        z = s @ w.T + bias
        ratio = np_softmax(t / 4)[np.arange(4), y] / np_softmax(z / 4)[np.arange(4), y]
        assert (ratio > 1.5 * w_max).all()
    d = AEKT(shapes(4), shapes(4), w_max=w_max, use_aekt=use_aekt).double()
    weight = torch.tensor(w, requires_grad=True)
    bias_t = torch.tensor(bias, requires_grad=True)
    s64 = torch.tensor(s, requires_grad=True)
    f = _as_function(d, torch.tensor(t), ctx_for(y, progress=30.0))
    assert torch.autograd.gradcheck(f, (s64, weight, bias_t), eps=1e-6, atol=1e-6)


def _np_aekt_parts(s, t, y, temp, w_max):
    ps, pt = np_softmax(s / temp), np_softmax(t / temp)
    idx = np.arange(len(y))
    w = np.minimum(pt[idx, y] / ps[idx, y], w_max)
    return ps, w


@pytest.mark.parametrize("drop", [False, True])
def test_aekt_target_logit_gradient(drop):
    # L = -tau^2 * (1/B) sum_b w_b log p_t,b, d log p_t / d z_t = (1 - p_t) / tau, so
    #   dL/dz_{b,t} = -tau * w_b * (1 - p_t,b) / B;   dL/dz_{b,j} = +tau * w_b * p_j,b / B (j != t).
    # Ablation (term divided by stopgrad(1 - p_t)): dL/dz_{b,t} = -tau * w_b / B,
    #   dL/dz_{b,j} = tau * w_b * p_j,b / ((1 - p_t,b) * B).
    temp, w_max, b = 4.0, 3.0, 16
    s, t, y = data(18, b=b, c=7, scale=4.0)
    s64 = torch.tensor(s, requires_grad=True)
    loss = aekt_loss(s64, torch.tensor(t), torch.tensor(y), temp, w_max, drop_gradient_factor=drop)
    grad, = torch.autograd.grad(loss, s64)
    ps, w = _np_aekt_parts(s, t, y, temp, w_max)
    assert (w == w_max).any() and (w < w_max).any()  # both clamped and unclamped samples
    idx = np.arange(b)
    p_t = ps[idx, y]
    expected_t = -temp * w / b if drop else -temp * w * (1 - p_t) / b
    np.testing.assert_allclose(grad.numpy()[idx, y], expected_t, rtol=1e-9, atol=1e-12)
    expected = temp * w[:, None] * ps / b
    if drop:
        expected = expected / (1 - p_t)[:, None]
    mask = np.ones_like(ps, dtype=bool)
    mask[idx, y] = False
    np.testing.assert_allclose(grad.numpy()[mask], expected[mask], rtol=1e-9, atol=1e-12)


def test_aekt_gradient_through_distiller_reaches_layer_and_student():
    s, t, y = data(19)
    d = AEKT(shapes(), shapes())
    s_t = to32(s).requires_grad_(True)
    total = d.spot_loss(0, s_t, to32(t), ctx_for(y, progress=30.0))
    total.backward()
    assert s_t.grad.abs().sum() > 0
    assert d.serializer.weight.grad.abs().sum() > 0 and d.serializer.bias.grad.abs().sum() > 0


def test_aekt_class_relations_and_top_related():
    rng = np.random.RandomState(20)
    w = rng.randn(C, C)
    d = AEKT(shapes(), shapes())
    with torch.no_grad():
        d.serializer.weight.copy_(to32(w))
    rel = d.class_relations()
    assert rel.shape == (C, C) and not rel.requires_grad
    np.testing.assert_allclose(rel.numpy(), w, rtol=1e-6)
    index, values = d.top_related(2, k=3)
    others = [j for j in range(C) if j != 2]
    expected = sorted(others, key=lambda j: -abs(w[2, j]))[:3]
    assert index.tolist() == expected
    np.testing.assert_allclose(values.numpy(), w[2, expected], rtol=1e-6)
    index_all, _ = d.top_related(2, k=C, include_self=True)
    assert sorted(index_all.tolist()) == list(range(C))
    with pytest.raises(ConfigError):
        d.top_related(C, k=2)


# -- option and shape errors -------------------------------------------------------------------------
@pytest.mark.parametrize("cls, options", [
    (DKD, {"temperature": 0.0}), (DKD, {"beta": -1.0}), (DKD, {"warmup_epochs": -1}),
    (DIST, {"temperature": -1.0}), (DIST, {"gamma": -1.0}),
    (AEKT, {"w_max": 0.0}), (AEKT, {"aekt_weight": -1.0}),
    (AEKT, {"use_tckd": False, "use_nckd": False, "use_aekt": False}),
])
def test_bad_options_raise_config_error(cls, options):
    with pytest.raises(ConfigError):
        cls(shapes(), shapes(), **options)


@pytest.mark.parametrize("cls", [DKD, DIST, AEKT])
def test_class_mismatch_and_single_class_raise_shape_error(cls):
    with pytest.raises(ShapeError, match="num_classes"):
        cls(shapes(5), shapes(6))
    with pytest.raises(ShapeError):
        cls(shapes(1), shapes(1))


# -- AEKT plots --------------------------------------------------------------------------------------------
def test_plot_class_relations(tmp_path):
    pytest.importorskip("matplotlib")
    from adakd.tools.report.aekt_plots import plot_class_relations, top_related_classes

    rng = np.random.RandomState(21)
    w = np.eye(8) + 0.1 * rng.randn(8, 8)
    assert top_related_classes(w, 3, k=4).tolist() == sorted(
        [j for j in range(8) if j != 3], key=lambda j: -abs(w[3, j]))[:4]
    out = plot_class_relations(w, [f"class{i}" for i in range(8)], tmp_path / "rel.png", top_k_class=3, k=4)
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rel.png"]
    with pytest.raises(ConfigError):
        plot_class_relations(w[:, :3], None, tmp_path / "bad.png")


def test_aekt_serializer_learns_at_scaled_lr_without_decay():
    """The C x C layer gets lr * serializer_lr_scale and no weight decay; the student keeps lr and decay."""
    from adakd.config import OptimizerConfig
    from adakd.engine.optim import build_optimizer, parameters_of
    from adakd.losses.aekt import AEKT
    from adakd.models.contract import FeatureShapes

    shapes = FeatureShapes(stages=[(4, 2, 2)], pooled=4, num_classes=5)
    loss = AEKT(shapes, shapes, serializer_lr_scale=0.02)
    student = torch.nn.Linear(3, 5)
    opt = build_optimizer(parameters_of([student, loss]), OptimizerConfig(lr=0.1, weight_decay=5e-4), 0.1)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(student.weight)]["lr"] == pytest.approx(0.1)
    assert by_param[id(student.weight)]["weight_decay"] == pytest.approx(5e-4)
    assert by_param[id(loss.serializer.weight)]["lr"] == pytest.approx(0.002)
    assert by_param[id(loss.serializer.weight)]["weight_decay"] == 0.0
