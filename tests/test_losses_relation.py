"""Relation-based distillers (SP, CC, RKD, PKT, CRD) and VID: golden values against NumPy float64
re-derivations, gradchecks, invariances, CRD's memory banks, subsets and small batches.

Golden values never call the code under test: each formula is re-derived here in NumPy from the
paper / reference code, with connector weights (and CRD's negatives) set to known values.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

import adakd.losses  # noqa: F401  (registers every distiller)
from adakd.errors import ConfigError, ShapeError
from adakd.losses.base import DistillContext
from adakd.losses.cc import CC
from adakd.losses.crd import CRD
from adakd.losses.pkt import PKT
from adakd.losses.rkd import RKD
from adakd.losses.sp import SP
from adakd.losses.vid import VID
from adakd.models.contract import Features, FeatureShapes
from adakd.registry import DISTILLERS

# many tiny ops (gradchecks): one thread, so a busy machine's OpenMP barriers do not stall them 100x
pytestmark = pytest.mark.usefixtures("one_torch_thread")

STUDENT_MAPS = [(3, 8, 8), (4, 8, 8), (5, 4, 4), (6, 2, 2)]
TEACHER_MAPS = [(4, 8, 8), (6, 4, 4), (7, 4, 4), (8, 2, 2)]


# ---------------------------------------------------------------------------------------------
# building features
# ---------------------------------------------------------------------------------------------
def make_features(shapes: list[tuple[int, int, int]], pooled: int = 6, batch: int = 4, seed: int = 0,
                  classes: int = 5, dtype: torch.dtype = torch.float64) -> Features:
    """Random Features: stem first; pre-activations ~ N(0, 1), stages = ReLU(pre-activations)."""
    g = torch.Generator().manual_seed(seed)
    pre = [torch.randn(batch, *s, generator=g, dtype=dtype) for s in shapes]
    return Features(
        logits=torch.randn(batch, classes, generator=g, dtype=dtype),
        stages=[p.relu() for p in pre],
        preact_stages=pre,
        pooled=torch.randn(batch, pooled, generator=g, dtype=dtype),
    )


def pair(batch: int = 4, dtype: torch.dtype = torch.float64) -> tuple[Features, Features]:
    return (make_features(STUDENT_MAPS, pooled=6, batch=batch, seed=1, dtype=dtype),
            make_features(TEACHER_MAPS, pooled=10, batch=batch, seed=2, dtype=dtype))


def ctx_for(f: Features, indices: torch.Tensor | None = None) -> DistillContext:
    return DistillContext(labels=torch.zeros(f.logits.shape[0], dtype=torch.long), indices=indices)


def np_(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def set_params(module: nn.Module, seed: int, scale: float = 0.5) -> dict[str, np.ndarray]:
    """Give every parameter known values (seeded NumPy draws); return them by name."""
    rng = np.random.default_rng(seed)
    values = {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            v = rng.standard_normal(tuple(p.shape)) * scale
            p.copy_(torch.from_numpy(v))
            values[name] = v
    return values


def gradcheck_module(module: nn.Module, fn, inputs: tuple[torch.Tensor, ...]) -> bool:
    """gradcheck of ``fn(params_dict, *inputs)`` w.r.t. the inputs and every parameter of ``module``."""
    names = [n for n, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in module.named_parameters())
    inputs = tuple(x.detach().clone().requires_grad_(True) for x in inputs)

    def wrapped(*args):
        return fn(dict(zip(names, args[:len(names)])), *args[len(names):])

    return torch.autograd.gradcheck(wrapped, params + inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# NumPy re-derivations (float64)
# ---------------------------------------------------------------------------------------------
def np_normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def np_sp(s: np.ndarray, t: np.ndarray) -> float:
    b = s.shape[0]
    gs = np_normalize_rows(s.reshape(b, -1) @ s.reshape(b, -1).T)
    gt = np_normalize_rows(t.reshape(b, -1) @ t.reshape(b, -1).T)
    return float(((gs - gt) ** 2).sum() / b**2)


def np_pkt(s: np.ndarray, t: np.ndarray, eps: float = 1e-7) -> float:
    def probs(x):
        x = x / (np.sqrt((x**2).sum(1, keepdims=True)) + eps)
        k = (x @ x.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    ps, pt = probs(s), probs(t)
    return float(np.mean(pt * np.log((pt + eps) / (ps + eps))))


def np_huber(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.mean(np.where(d < 1, 0.5 * d**2, d - 0.5)))


def np_rkd(s: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """(distance loss, angle loss), unweighted, from the paper's definitions."""
    def dist(e):
        d = np.sqrt(((e[:, None, :] - e[None, :, :]) ** 2).sum(-1))
        off = ~np.eye(len(e), dtype=bool)
        return d / d[off].mean()

    def angle(e):
        b = len(e)
        out = np.zeros((b, b, b))
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    if nu > 0 and nv > 0:
                        out[i, j, k] = u @ v / (nu * nv)
        return out

    return np_huber(dist(s), dist(t)), np_huber(angle(s), angle(t))


def np_cc(fs: np.ndarray, ft: np.ndarray, gamma: float, order: int) -> float:
    def corr(f):
        f = np_normalize_rows(f)
        sim = f @ f.T
        return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * sim**p for p in range(order + 1))

    return float(np.mean((corr(fs) - corr(ft)) ** 2))


def np_pool(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Adaptive average pooling: window i covers [floor(i H / o), ceil((i + 1) H / o))."""
    h, w = x.shape[-2:]
    oh, ow = size
    out = np.zeros(x.shape[:-2] + (oh, ow))
    for i in range(oh):
        h0, h1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        for j in range(ow):
            w0, w1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            out[..., i, j] = x[..., h0:h1, w0:w1].mean(axis=(-1, -2))
    return out


def np_softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(x))


def np_vid_stage(s: np.ndarray, t: np.ndarray, w1, w2, w3, alpha, eps: float = 1e-5) -> float:
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    s = np_pool(s, size) if s.shape[2:] != size else s
    t = np_pool(t, size) if t.shape[2:] != size else t
    conv = lambda x, w: np.einsum("bchw,oc->bohw", x, w[:, :, 0, 0])  # noqa: E731
    mu = conv(np.maximum(conv(np.maximum(conv(s, w1), 0), w2), 0), w3)
    var = (np_softplus(alpha) + eps)[None, :, None, None]
    return float(np.mean(0.5 * (np.log(var) + (mu - t) ** 2 / var)))


def np_nce(p: np.ndarray, n: int, eps: float = 1e-7) -> float:
    k = p.shape[1] - 1
    pn = k / n
    return float(-(np.log(p[:, 0] / (p[:, 0] + pn + eps)).sum() + np.log(pn / (p[:, 1:] + pn + eps)).sum())
                 / p.shape[0])


# ---------------------------------------------------------------------------------------------
# registry and defaults
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,weight,kind", [
    ("sp", 3000.0, "last"), ("cc", 0.02, "pooled"), ("rkd", 1.0, "pooled"),
    ("pkt", 30000.0, "pooled"), ("crd", 0.8, "pooled"), ("vid", 1.0, "stages"),
])
def test_registered_with_reference_defaults(name, weight, kind):
    entry = DISTILLERS.get(name)
    assert entry.extra["default_weight"] == weight
    assert entry.extra["spot_kind"] == kind
    assert entry.paper and entry.description


# ---------------------------------------------------------------------------------------------
# SP
# ---------------------------------------------------------------------------------------------
def test_sp_golden_value():
    s, t = pair()
    sp = SP(FeatureShapes.of(s), FeatureShapes.of(t))
    got = sp(s, t, ctx_for(s))["sp"]
    want = 3000.0 * np_sp(np_(s.stages[-1]), np_(t.stages[-1]))
    assert want > 1e-3
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_sp_invariant_to_scale_and_orthogonal_feature_maps():
    s, t = pair()
    sp = SP(FeatureShapes.of(s), FeatureShapes.of(t))
    t_last = t.stages[-1]
    # same Gram matrix up to a positive factor -> zero loss
    assert sp.spot_loss(0, 3.7 * t_last, t_last, ctx_for(t)).item() == pytest.approx(0.0, abs=1e-20)
    flat = t_last.flatten(1)
    q, _ = torch.linalg.qr(torch.randn(flat.shape[1], flat.shape[1], dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(3)))
    rotated = (flat @ q).view(t_last.shape)
    assert sp.spot_loss(0, rotated, t_last, ctx_for(t)).item() == pytest.approx(0.0, abs=1e-20)


def test_sp_input_gradcheck():
    s, t = pair(batch=3)
    sp = SP(FeatureShapes.of(s), FeatureShapes.of(t), weight=1.0)
    x = s.stages[-1][:, :2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: sp.spot_loss(0, a, t.stages[-1], ctx_for(t)), (x,))


# ---------------------------------------------------------------------------------------------
# PKT
# ---------------------------------------------------------------------------------------------
def test_pkt_golden_value():
    s, t = pair(batch=5)
    pkt = PKT(FeatureShapes.of(s), FeatureShapes.of(t))
    got = pkt(s, t, ctx_for(s))["pkt"]
    want = 30000.0 * np_pkt(np_(s.pooled), np_(t.pooled))
    assert want > 1.0
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_pkt_invariant_to_scale_and_rotation():
    _, t = pair(batch=5)
    pkt = PKT(FeatureShapes(stages=[], pooled=10, num_classes=5), FeatureShapes.of(t), weight=1.0)
    q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
    for student in (2.5 * t.pooled, t.pooled @ q):
        assert abs(pkt.spot_loss(0, student, t.pooled, ctx_for(t)).item()) < 1e-12
    # a different embedding gives a positive KL
    assert pkt.spot_loss(0, t.pooled.flip(0), t.pooled, ctx_for(t)).item() > 1e-4


def test_pkt_input_gradcheck():
    s, t = pair(batch=4)
    pkt = PKT(FeatureShapes.of(s), FeatureShapes.of(t), weight=1.0)
    x = s.pooled.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: pkt.spot_loss(0, a, t.pooled, ctx_for(t)), (x,))


# ---------------------------------------------------------------------------------------------
# RKD
# ---------------------------------------------------------------------------------------------
def test_rkd_golden_terms_and_spot_sum():
    s, t = pair(batch=5)
    rkd = RKD(FeatureShapes.of(s), FeatureShapes.of(t), weight=2.0)
    terms = rkd(s, t, ctx_for(s))
    d, a = np_rkd(np_(s.pooled), np_(t.pooled))
    assert d > 1e-3 and a > 1e-3
    assert set(terms) == {"rkd_distance", "rkd_angle"}
    assert terms["rkd_distance"].item() == pytest.approx(2.0 * 25.0 * d, rel=1e-8)
    assert terms["rkd_angle"].item() == pytest.approx(2.0 * 50.0 * a, rel=1e-8)
    spot = rkd.spot_loss(0, s.pooled, t.pooled, ctx_for(s))
    assert spot.item() == pytest.approx(2.0 * (25.0 * d + 50.0 * a), rel=1e-8)


def test_rkd_zero_for_scaled_translated_rotated_teacher():
    _, t = pair(batch=5)
    rkd = RKD(FeatureShapes(stages=[], pooled=12, num_classes=5), FeatureShapes.of(t))
    # embed the 10-d teacher into 12-d with orthonormal columns, scale and translate
    q, _ = torch.linalg.qr(torch.randn(12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    student = 3.0 * t.pooled @ q.t() + torch.linspace(-1, 1, 12, dtype=torch.float64)
    terms = rkd.terms(student, t.pooled)
    assert terms["rkd_distance"].item() == pytest.approx(0.0, abs=1e-12)
    assert terms["rkd_angle"].item() == pytest.approx(0.0, abs=1e-12)
    # scaling changes the raw distances but not the mean-normalised ones
    assert rkd.terms(0.1 * t.pooled, t.pooled)["rkd_distance"].item() == pytest.approx(0.0, abs=1e-12)


def test_rkd_input_gradcheck():
    s, t = pair(batch=4)
    rkd = RKD(FeatureShapes.of(s), FeatureShapes.of(t))
    x = s.pooled.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: rkd.spot_loss(0, a, t.pooled, ctx_for(t)), (x,))


def test_rkd_rejects_negative_weights():
    s, t = pair()
    with pytest.raises(ConfigError, match="distance_weight"):
        RKD(FeatureShapes.of(s), FeatureShapes.of(t), distance_weight=-1)


# ---------------------------------------------------------------------------------------------
# CC
# ---------------------------------------------------------------------------------------------
def test_cc_taylor_rbf_golden_value_with_known_embeddings():
    s, t = pair(batch=5)
    cc = CC(FeatureShapes.of(s), FeatureShapes.of(t), embed_dim=7, form="taylor_rbf").double()
    w = set_params(cc, seed=10)
    got = cc(s, t, ctx_for(s))["cc"]
    fs = np_(s.pooled) @ w["embed_s.weight"].T + w["embed_s.bias"]
    ft = np_(t.pooled) @ w["embed_t.weight"].T + w["embed_t.bias"]
    want = 0.02 * np_cc(fs, ft, gamma=0.4, order=2)
    assert want > 1e-6
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_cc_taylor_series_converges_to_the_gaussian_rbf():
    """With a high order the correlation is exp(-gamma ||f~_i - f~_j||^2) of the normalised embeddings."""
    s, t = pair(batch=4)
    cc = CC(FeatureShapes.of(s), FeatureShapes.of(t), weight=1.0, embed_dim=5, gamma=0.4, p_order=14,
            form="taylor_rbf").double()
    w = set_params(cc, seed=11)

    def rbf(f):
        f = np_normalize_rows(f)
        return np.exp(-0.4 * ((f[:, None] - f[None]) ** 2).sum(-1))

    fs = np_(s.pooled) @ w["embed_s.weight"].T + w["embed_s.bias"]
    ft = np_(t.pooled) @ w["embed_t.weight"].T + w["embed_t.bias"]
    want = float(np.mean((rbf(fs) - rbf(ft)) ** 2))
    assert cc.spot_loss(0, s.pooled, t.pooled, ctx_for(s)).item() == pytest.approx(want, rel=1e-8)


def test_cc_default_is_the_crd_code_form_golden_value():
    """The default form is the CRD repository's surrogate (what the reference weight 0.02 was tuned for)."""
    s, t = pair(batch=5)
    cc = CC(FeatureShapes.of(s), FeatureShapes.of(t), embed_dim=7).double()
    assert cc.form == "crd_code"
    w = set_params(cc, seed=13)
    fs = np_(s.pooled) @ w["embed_s.weight"].T + w["embed_s.bias"]
    ft = np_(t.pooled) @ w["embed_t.weight"].T + w["embed_t.bias"]
    delta = np.abs(fs - ft)
    want = 0.02 * np.mean([(delta[i] * delta[i + 1]).sum() for i in range(4)])
    assert cc.spot_loss(0, s.pooled, t.pooled, ctx_for(s)).item() == pytest.approx(want, rel=1e-10)
    with pytest.raises(ConfigError, match="form"):
        CC(FeatureShapes.of(s), FeatureShapes.of(t), form="bilinear")


@pytest.mark.parametrize("form", ["crd_code", "taylor_rbf"])
def test_cc_gradcheck_embeddings_and_input(form):
    s, t = pair(batch=4)
    cc = CC(FeatureShapes.of(s), FeatureShapes.of(t), weight=1.0, embed_dim=3, form=form).double()
    set_params(cc, seed=12)
    ctx = ctx_for(s)
    assert gradcheck_module(cc, lambda p, x: _call(cc, p, "spot_loss", 0, x, t.pooled, ctx), (s.pooled,))


def _call(module: nn.Module, params: dict, method: str, *args):
    """``module.<method>(*args)`` with its parameters replaced by ``params`` (for gradcheck)."""
    return functional_call(_MethodCall(module, method), {f"m.{k}": v for k, v in params.items()}, args)


class _MethodCall(nn.Module):
    def __init__(self, m: nn.Module, method: str) -> None:
        super().__init__()
        self.m = m
        self.method = method

    def forward(self, *args):
        return getattr(self.m, self.method)(*args)


# ---------------------------------------------------------------------------------------------
# VID
# ---------------------------------------------------------------------------------------------
def np_vid(vid_params: dict[str, np.ndarray], s: Features, t: Features, k: int) -> float:
    """Stage k (0-based after the stem) of VID in NumPy."""
    p = {n: v for n, v in vid_params.items() if n.startswith(f"regressors.{k}.")}
    return np_vid_stage(np_(s.stages[k + 1]), np_(t.stages[k + 1]), p[f"regressors.{k}.mean.0.weight"],
                        p[f"regressors.{k}.mean.2.weight"], p[f"regressors.{k}.mean.4.weight"],
                        p[f"regressors.{k}.alpha"])


def test_vid_initial_variance_and_regressor_shapes():
    s, t = pair()
    vid = VID(FeatureShapes.of(s), FeatureShapes.of(t))
    assert len(vid.regressors) == 3
    for reg, (cs, _, _), (ct, _, _) in zip(vid.regressors, STUDENT_MAPS[1:], TEACHER_MAPS[1:]):
        assert torch.allclose(reg.variance(), torch.full((ct,), 5.0), atol=1e-6)
        shapes = [tuple(m.weight.shape) for m in reg.mean if isinstance(m, nn.Conv2d)]
        assert shapes == [(ct, cs, 1, 1), (ct, ct, 1, 1), (ct, ct, 1, 1)]


def test_vid_golden_value_all_stages_and_spots():
    """Stage 1: the 8x8 student is pooled to the teacher's 4x4; stage 2: the 8x8 teacher is pooled to
    the student's 4x4; stage 3: same size."""
    s, t = pair(batch=3)
    # make stage 2's teacher larger than the student to exercise pooling the teacher
    t.stages[2] = torch.randn(3, 7, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    vid = VID(FeatureShapes.of(s), FeatureShapes.of(t), weight=1.5).double()
    w = set_params(vid, seed=20, scale=0.4)
    per_stage = [np_vid(w, s, t, k) for k in range(3)]
    got = vid(s, t, ctx_for(s))["vid"]
    assert got.item() == pytest.approx(1.5 * sum(per_stage), rel=1e-10)
    for k in range(3):
        spot = vid.spot_loss(k, s.stages[k + 1], t.stages[k + 1], ctx_for(s))
        assert spot.item() == pytest.approx(1.5 * per_stage[k], rel=1e-10)


def test_vid_gradcheck_regressor_variance_and_input():
    s = make_features([(2, 4, 4), (2, 2, 2)], batch=2, seed=3)
    t = make_features([(2, 4, 4), (3, 2, 2)], batch=2, seed=4)
    vid = VID(FeatureShapes.of(s), FeatureShapes.of(t), mid_channels=2).double()
    set_params(vid, seed=21)
    ctx = ctx_for(s)
    assert gradcheck_module(vid, lambda p, x: _call(vid, p, "spot_loss", 0, x, t.stages[1], ctx),
                            (s.stages[1] + 0.1,))


def test_vid_needs_the_same_number_of_stages():
    s, t = pair()
    t_short = FeatureShapes(stages=list(TEACHER_MAPS[:3]), pooled=10, num_classes=5)
    with pytest.raises(ShapeError, match="same number of stages"):
        VID(FeatureShapes.of(s), t_short)


# ---------------------------------------------------------------------------------------------
# CRD
# ---------------------------------------------------------------------------------------------
N_DATA = 12


def make_crd(s: Features, t: Features, dim: int = 4, k: int = 5, seed: int = 0, **kw) -> CRD:
    return CRD(FeatureShapes.of(s), FeatureShapes.of(t), num_samples=N_DATA, embed_dim=dim,
               num_negatives=k, seed=seed, **kw).double()


def test_crd_negatives_uniform_exclude_positive_and_reproducible():
    s, t = pair()
    crd = make_crd(s, t, k=11, seed=7)
    idx = torch.arange(N_DATA)
    neg = torch.cat([crd.sample_negatives(idx) for _ in range(400)], dim=1)  # [12, 4400]
    assert neg.shape == (N_DATA, 4400)
    assert neg.min() >= 0 and neg.max() < N_DATA
    assert not (neg == idx.unsqueeze(1)).any()
    # uniform over the 11 other indices: each gets ~400 draws per row
    counts = torch.stack([torch.bincount(row, minlength=N_DATA) for row in neg]).double()
    counts[idx, idx] = float("nan")
    assert torch.nanmean((counts - 400.0).abs()).item() < 40.0
    again = make_crd(s, t, k=11, seed=7).sample_negatives(idx)
    assert torch.equal(again, neg[:, :11])


def test_crd_golden_value_z_and_memory_update(monkeypatch):
    s, t = pair(batch=3)
    crd = make_crd(s, t, dim=4, k=5, momentum=0.3, temperature=0.5)
    w = set_params(crd, seed=30)
    rng = np.random.default_rng(31)
    mem_s = np_normalize_rows(rng.standard_normal((N_DATA, 4)))
    mem_t = np_normalize_rows(rng.standard_normal((N_DATA, 4)))
    crd.memory_s.copy_(torch.from_numpy(mem_s))
    crd.memory_t.copy_(torch.from_numpy(mem_t))
    idx = np.array([4, 0, 9])
    neg = np.array([[1, 2, 3, 5, 11], [3, 3, 7, 8, 1], [0, 10, 2, 4, 6]])
    monkeypatch.setattr(crd, "sample_negatives", lambda i: torch.from_numpy(neg))
    got = crd(s, t, ctx_for(s, torch.from_numpy(idx)))["crd"]

    v_s = np_normalize_rows(np_(s.pooled) @ w["embed_s.linear.weight"].T + w["embed_s.linear.bias"])
    v_t = np_normalize_rows(np_(t.pooled) @ w["embed_t.linear.weight"].T + w["embed_t.linear.bias"])
    contrast = np.concatenate([idx[:, None], neg], axis=1)
    out_s = np.exp(np.einsum("bkd,bd->bk", mem_t[contrast], v_s) / 0.5)  # student anchor, teacher memory
    out_t = np.exp(np.einsum("bkd,bd->bk", mem_s[contrast], v_t) / 0.5)
    z_s, z_t = out_s.mean() * N_DATA, out_t.mean() * N_DATA
    want = 0.8 * (np_nce(out_s / z_s, N_DATA) + np_nce(out_t / z_t, N_DATA))
    assert got.item() == pytest.approx(want, rel=1e-10)
    assert crd.z_s.item() == pytest.approx(z_s, rel=1e-12)
    assert crd.z_t.item() == pytest.approx(z_t, rel=1e-12)

    # memory: the batch rows move by momentum and are renormalised; the others are untouched
    new_s = np_normalize_rows(0.3 * mem_s[idx] + 0.7 * v_s)
    new_t = np_normalize_rows(0.3 * mem_t[idx] + 0.7 * v_t)
    np.testing.assert_allclose(np_(crd.memory_s)[idx], new_s, rtol=1e-12)
    np.testing.assert_allclose(np_(crd.memory_t)[idx], new_t, rtol=1e-12)
    rest = np.setdiff1d(np.arange(N_DATA), idx)
    np.testing.assert_array_equal(np_(crd.memory_s)[rest], mem_s[rest])
    np.testing.assert_array_equal(np_(crd.memory_t)[rest], mem_t[rest])

    # Z is estimated once: a second step keeps it
    crd(s, t, ctx_for(s, torch.from_numpy(idx)))
    assert crd.z_s.item() == pytest.approx(z_s, rel=1e-12)


def test_crd_gradcheck_embeddings_and_input(monkeypatch):
    s, t = pair(batch=2)
    crd = make_crd(s, t, dim=3, k=3)
    set_params(crd, seed=32)
    crd.z_s.fill_(7.0)
    crd.z_t.fill_(9.0)
    mem = (crd.memory_s.clone(), crd.memory_t.clone())
    idx = torch.tensor([2, 5])
    monkeypatch.setattr(crd, "sample_negatives", lambda i: torch.tensor([[0, 1, 3], [4, 6, 6]]))
    ctx = ctx_for(s, idx)

    def loss(p, x):
        crd.memory_s.copy_(mem[0])  # every evaluation starts from the same banks
        crd.memory_t.copy_(mem[1])
        return _call(crd, p, "spot_loss", 0, x, t.pooled, ctx)

    assert gradcheck_module(crd, loss, (s.pooled,))


def test_crd_subset_updates_only_the_subset_rows():
    s, t = pair(batch=4)
    crd = make_crd(s, t)
    before_s, before_t = crd.memory_s.clone(), crd.memory_t.clone()
    idx = torch.tensor([3, 7, 1, 10])
    mask = torch.tensor([False, True, False, True])
    ctx = ctx_for(s, idx).subset(mask)
    loss = crd.spot_loss(0, s.pooled[mask], t.pooled[mask], ctx)
    assert torch.isfinite(loss)
    loss.backward()
    changed = (crd.memory_s != before_s).any(dim=1).nonzero().flatten().tolist()
    assert changed == [7, 10]
    assert (crd.memory_t != before_t).any(dim=1).nonzero().flatten().tolist() == [7, 10]
    assert crd.embed_s.linear.weight.grad is not None and torch.isfinite(crd.embed_s.linear.weight.grad).all()


def test_crd_state_dict_round_trip():
    s, t = pair(batch=3)
    crd = make_crd(s, t, seed=3)
    idx = torch.tensor([0, 5, 11])
    crd(s, t, ctx_for(s, idx))  # sets Z, moves the banks
    state = crd.state_dict()
    assert {"memory_s", "memory_t", "z_s", "z_t"} <= set(state)
    other = make_crd(s, t, seed=3)
    other.load_state_dict(state)
    for key in ("memory_s", "memory_t", "z_s", "z_t", "embed_s.linear.weight"):
        assert torch.equal(other.state_dict()[key], state[key])
    # same state and sampler seed -> the same next loss (the sampler's stream restarts in both)
    fresh = make_crd(s, t, seed=3)
    fresh.load_state_dict(state)
    a = other(s, t, ctx_for(s, idx))["crd"]
    b = fresh(s, t, ctx_for(s, idx))["crd"]
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_crd_default_options_on_cpu_cap_negatives_with_a_warning():
    s, t = pair(batch=4, dtype=torch.float32)
    with pytest.warns(UserWarning, match="num_negatives=16384"):
        crd = CRD(FeatureShapes.of(s), FeatureShapes.of(t), num_samples=50)
    assert crd.num_negatives == 49 and crd.memory_s.shape == (50, 128)
    loss = crd(s, t, ctx_for(s, torch.tensor([0, 1, 2, 49])))["crd"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 0


def test_crd_errors_name_the_fix():
    s, t = pair(batch=2)
    crd = make_crd(s, t)
    with pytest.raises(ConfigError, match="indices"):
        crd(s, t, ctx_for(s))
    with pytest.raises(ConfigError, match="num_samples"):
        crd(s, t, ctx_for(s, torch.tensor([0, N_DATA])))
    with pytest.raises(ConfigError, match="momentum"):
        make_crd(s, t, momentum=1.0)
    with pytest.raises(ConfigError, match="at least 2"):
        CRD(FeatureShapes.of(s), FeatureShapes.of(t), num_samples=1)


# ---------------------------------------------------------------------------------------------
# every loss: batch of 2, subsets, autocast
# ---------------------------------------------------------------------------------------------
ALL = ["sp", "cc", "rkd", "pkt", "crd", "vid"]


def build(name: str, s: Features, t: Features) -> nn.Module:
    extra = {"num_samples": N_DATA, "num_negatives": 5} if name == "crd" else {}
    return DISTILLERS.build(name, FeatureShapes.of(s), FeatureShapes.of(t), **extra)


@pytest.mark.parametrize("name", ALL)
def test_finite_with_batch_of_two_and_gradients_flow(name):
    s, t = pair(batch=2, dtype=torch.float32)
    for x in [*s.stages, s.pooled]:
        x.requires_grad_(True)
    loss_fn = build(name, s, t)
    terms = loss_fn(s, t, ctx_for(s, torch.tensor([3, 8])))
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [x.grad for x in [*s.stages, s.pooled] if x.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ALL)
def test_spot_loss_on_subsets(name):
    s, t = pair(batch=5, dtype=torch.float32)
    loss_fn = build(name, s, t)
    ctx = ctx_for(s, torch.tensor([0, 2, 4, 6, 8]))
    s_spots, t_spots = loss_fn.spot_features(s), loss_fn.spot_features(t, teacher=True)
    for mask in ([True, False, True, True, False], [False, True, False, False, False], [False] * 5):
        m = torch.tensor(mask)
        for i, (sf, tf) in enumerate(zip(s_spots, t_spots)):
            value = loss_fn.spot_loss(i, sf[m], tf[m], ctx.subset(m))
            assert value.dim() == 0 and torch.isfinite(value)
            if sum(mask) == 0 or (sum(mask) == 1 and name != "crd" and name != "vid"):
                assert value.item() == 0.0  # no pairs: relations are empty


@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_on_cpu(name):
    s, t = pair(batch=4, dtype=torch.float32)
    loss_fn = build(name, s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = loss_fn(s, t, ctx_for(s, torch.tensor([0, 1, 2, 3])))
    for v in terms.values():
        assert v.dtype == torch.float32 and torch.isfinite(v)
