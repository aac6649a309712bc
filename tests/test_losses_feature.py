"""Feature-based distillers: golden values against NumPy float64 re-derivations, gradchecks,
shape adaptation and the errors a user can cause.

Golden values never call the code under test: each formula is re-derived here in NumPy from the
paper / reference code (with connector weights set to known values where a method learns some).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import adakd.losses  # noqa: F401  (registers every distiller)
from adakd.errors import ConfigError, ShapeError
from adakd.losses.ab import AB
from adakd.losses.at import AT
from adakd.losses.base import DistillContext
from adakd.losses.connectors import ConvBNRegressor
from adakd.losses.fitnet import FitNet
from adakd.losses.fsp import FSP
from adakd.losses.ft import FT
from adakd.losses.kdsvd import KDSVD
from adakd.losses.nst import NST
from adakd.losses.ofd import OFD, negative_margin
from adakd.losses.reviewkd import ReviewKD, hierarchical_context_loss
from adakd.models.contract import Features, FeatureShapes
from adakd.registry import DISTILLERS

# many tiny ops (gradchecks): one thread, so a busy machine's OpenMP barriers do not stall them 100x
pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS_BN = 1e-5


# ---------------------------------------------------------------------------------------------
# building features
# ---------------------------------------------------------------------------------------------
def make_features(shapes: list[tuple[int, int, int]], pooled: int = 6, batch: int = 2, seed: int = 0,
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


def ctx_for(f: Features, progress: float = 0.0) -> DistillContext:
    return DistillContext(labels=torch.zeros(f.logits.shape[0], dtype=torch.long), progress=progress)


def np_(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def set_params(module: nn.Module, seed: int, scale: float = 0.5) -> dict[str, np.ndarray]:
    """Give every parameter known values (seeded NumPy draws); return them by name."""
    rng = np.random.default_rng(seed)
    values = {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            v = rng.standard_normal(tuple(p.shape)) * scale
            if p.dim() == 1 and name.endswith("weight"):
                v = 1.0 + 0.2 * v  # BatchNorm scales near 1
            p.copy_(torch.from_numpy(v))
            values[name] = v
    return values


# ---------------------------------------------------------------------------------------------
# NumPy building blocks (float64)
# ---------------------------------------------------------------------------------------------
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


def np_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = x.shape[-2:]
    rows = (np.arange(size[0]) * h) // size[0]
    cols = (np.arange(size[1]) * w) // size[1]
    return x[..., rows, :][..., :, cols]


def np_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if x.shape[-2:] == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return np_pool(x, size)
    return np_nearest(x, size)


def np_common(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return np_pool(a, size) if a.shape[-2:] != size else a, np_pool(b, size) if b.shape[-2:] != size else b


def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, stride: int = 1, pad: int = 0) -> np.ndarray:
    bsz, _, h, wd = x.shape
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((bsz, w.shape[0], oh, ow))
    for di in range(k):
        for dj in range(k):
            patch = xp[:, :, di:di + stride * (oh - 1) + 1:stride, dj:dj + stride * (ow - 1) + 1:stride]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, di, dj])
    return out if b is None else out + b[None, :, None, None]


def np_conv_transpose(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int = 1) -> np.ndarray:
    """Stride-1 transposed conv (weight [in, out, k, k]) = conv with the flipped, transposed kernel."""
    k = w.shape[2]
    return np_conv(x, w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), b, 1, k - 1 - pad)


def np_bn(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """BatchNorm in training mode: batch statistics, biased variance."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + EPS_BN) * gamma[None, :, None, None] + beta[None, :, None, None]


def np_normalize(x: np.ndarray, axis: int) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def np_leaky(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, 0.1 * x)


def np_regressor(x: np.ndarray, t_shape: tuple[int, int, int], w: np.ndarray, gamma: np.ndarray,
                 beta: np.ndarray) -> np.ndarray:
    """The documented regressor: 1x1 conv (same size), 3x3/2 conv (half, rounded up), else resize + 1x1."""
    hs, ws = x.shape[-2:]
    _, ht, wt = t_shape
    if (hs, ws) == (ht, wt):
        y = np_conv(x, w)
    elif ((hs + 1) // 2, (ws + 1) // 2) == (ht, wt):
        y = np_conv(x, w, stride=2, pad=1)
    else:
        y = np_conv(np_resize(x, (ht, wt)), w)
    return np_bn(y, gamma, beta)


# Shapes shared by several tests: 3 stages after the stem, different widths and spatial sizes.
STUDENT = [(3, 8, 8), (4, 8, 8), (6, 7, 7), (8, 4, 4)]
TEACHER = [(3, 8, 8), (5, 8, 8), (7, 4, 4), (9, 2, 2)]


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, weight, kind", [
    ("fitnet", 100.0, "mid"), ("at", 1000.0, "stages"), ("nst", 50.0, "stages"), ("ft", 200.0, "last"),
    ("ab", 1.0, "stages"), ("fsp", 5.0, "stages"), ("kdsvd", 1.0, "stages"), ("ofd", 0.001, "stages"),
    ("reviewkd", 5.0, "stages"),
])
def test_registered_with_reference_defaults(name, weight, kind):
    entry = DISTILLERS.get(name)
    assert entry.extra["default_weight"] == weight
    assert entry.extra["spot_kind"] == kind
    assert entry.paper


def test_pretrain_epochs_defaults_and_override():
    s, t = make_features(STUDENT), make_features(TEACHER)
    ss, ts = FeatureShapes.of(s), FeatureShapes.of(t)
    assert FT.pretrain_epochs == AB.pretrain_epochs == FSP.pretrain_epochs == 30
    assert FT(ss, ts, pretrain_epochs=5).pretrain_epochs == 5
    assert FT(ss, ts).pretrain_epochs == 30
    assert AB(ss, ts, pretrain_epochs=0).pretrain_epochs == 0
    with pytest.raises(ConfigError):
        FT(ss, ts, pretrain_epochs=-1)


# ---------------------------------------------------------------------------------------------
# golden values
# ---------------------------------------------------------------------------------------------
def test_at_golden():
    s, t = make_features(STUDENT, seed=1), make_features(TEACHER, seed=2)
    loss = AT(FeatureShapes.of(s), FeatureShapes.of(t))(s, t, ctx_for(s))["at"]
    expected = 0.0
    for fs, ft in zip(s.stages[1:], t.stages[1:]):
        a, b = np_common(np_(fs), np_(ft))
        at_s = np_normalize((a ** 2).mean(axis=1).reshape(a.shape[0], -1), 1)
        at_t = np_normalize((b ** 2).mean(axis=1).reshape(b.shape[0], -1), 1)
        expected += ((at_s - at_t) ** 2).mean()
    assert loss.item() == pytest.approx(1000.0 * expected, rel=1e-10)


def test_nst_golden():
    s, t = make_features(STUDENT, seed=3), make_features(TEACHER, seed=4)
    loss = NST(FeatureShapes.of(s), FeatureShapes.of(t))(s, t, ctx_for(s))["nst"]
    expected = 0.0
    for fs, ft in zip(s.stages[1:], t.stages[1:]):
        a, b = np_common(np_(fs), np_(ft))
        a = np_normalize(a.reshape(a.shape[0], a.shape[1], -1), 2)
        b = np_normalize(b.reshape(b.shape[0], b.shape[1], -1), 2)

        def k(x, y):
            return (np.einsum("nid,njd->nij", x, y) ** 2).mean()

        expected += k(b, b) + k(a, a) - 2 * k(a, b)
    assert loss.item() == pytest.approx(50.0 * expected, rel=1e-10)


@pytest.mark.parametrize("s_hint, t_hint", [
    ((6, 8, 8), (7, 4, 4)),   # half: 3x3 stride-2 conv
    ((6, 7, 7), (7, 4, 4)),   # 28x28-derived 7x7 -> 4x4: stride 2, rounded up
    ((6, 7, 7), (7, 3, 3)),   # other ratio: adaptive pool + 1x1
    ((6, 4, 4), (7, 7, 7)),   # teacher larger: nearest upsampling + 1x1
    ((6, 5, 5), (7, 5, 5)),   # same size: 1x1
])
def test_fitnet_golden(s_hint, t_hint):
    s = make_features([(3, 8, 8), (4, 8, 8), s_hint, (8, 2, 2)], seed=5)
    t = make_features([(3, 8, 8), (5, 8, 8), t_hint, (9, 2, 2)], seed=6)
    loss_fn = FitNet(FeatureShapes.of(s), FeatureShapes.of(t)).double()
    p = set_params(loss_fn, seed=7)
    loss = loss_fn(s, t, ctx_for(s))["fitnet"]
    y = np_regressor(np_(s.stages[2]), t_hint, p["regressor.conv.weight"], p["regressor.bn.weight"],
                     p["regressor.bn.bias"])
    expected = 100.0 * ((np.maximum(y, 0) - np_(t.stages[2])) ** 2).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def np_bn_running(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray
                  ) -> np.ndarray:
    """BatchNorm in evaluation mode: the running statistics."""
    return (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + EPS_BN) * gamma[None, :, None, None] \
        + beta[None, :, None, None]


@pytest.mark.parametrize("paraphraser_bn", [True, False], ids=["authors-bn", "crd-no-bn"])
def test_ft_golden_distillation_and_pretraining(paraphraser_bn):
    s, t = make_features(STUDENT, seed=8), make_features(TEACHER, seed=9)
    loss_fn = FT(FeatureShapes.of(s), FeatureShapes.of(t), paraphraser_bn=paraphraser_bn).double()
    p = set_params(loss_fn, seed=10, scale=0.3)
    running = {}  # known running statistics for the frozen paraphraser's BatchNorms
    rng = np.random.default_rng(11)
    with torch.no_grad():
        for name, m in loss_fn.paraphraser.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                running[f"paraphraser.{name}"] = (rng.standard_normal(m.num_features) * 0.1,
                                                  rng.uniform(0.5, 2.0, m.num_features))
                m.running_mean.copy_(torch.from_numpy(running[f"paraphraser.{name}"][0]))
                m.running_var.copy_(torch.from_numpy(running[f"paraphraser.{name}"][1]))
    out = loss_fn(s, t, ctx_for(s))["ft"]

    def enc(x, prefix, bn, use_running=False):
        idx = 0
        for _ in range(3):
            x = np_conv(x, p[f"{prefix}.{idx}.weight"], p.get(f"{prefix}.{idx}.bias"), pad=1)
            idx += 1
            if bn:
                g, b = p[f"{prefix}.{idx}.weight"], p[f"{prefix}.{idx}.bias"]
                x = np_bn_running(x, g, b, *running[f"{prefix}.{idx}"]) if use_running else np_bn(x, g, b)
                idx += 1
            x = np_leaky(x)
            idx += 1
        return x

    fs = enc(np_(s.stages[-1]), "translator.encoder", bn=True)    # [2, 4, 4, 4]: factor C = int(9 * 0.5)
    ft = enc(np_(t.stages[-1]), "paraphraser.encoder", bn=paraphraser_bn, use_running=True)  # [2, 4, 2, 2], frozen
    assert fs.shape[1] == ft.shape[1] == 4
    fs, ft = np_common(fs, ft)
    phi_s = np_normalize((fs ** 2).mean(axis=1).reshape(2, -1), 1)
    phi_t = np_normalize((ft ** 2).mean(axis=1).reshape(2, -1), 1)
    assert out.item() == pytest.approx(200.0 * np.abs(phi_s - phi_t).mean(), rel=1e-10)

    # pre-training: reconstruction of the teacher's last stage through the paraphraser (batch statistics)
    x = np_(t.stages[-1])
    z = enc(x, "paraphraser.encoder", bn=paraphraser_bn)
    idx = 0
    for _ in range(3):
        z = np_conv_transpose(z, p[f"paraphraser.decoder.{idx}.weight"], p.get(f"paraphraser.decoder.{idx}.bias"))
        idx += 1
        if paraphraser_bn:
            z = np_bn(z, p[f"paraphraser.decoder.{idx}.weight"], p[f"paraphraser.decoder.{idx}.bias"])
            idx += 1
        z = np_leaky(z)
        idx += 1
    pre = loss_fn.pretrain_loss(s, t, ctx_for(s))
    assert pre.item() == pytest.approx(((z - x) ** 2).mean(), rel=1e-10)


def test_ft_frozen_paraphraser_keeps_its_running_statistics():
    """The main stage reads the paraphraser in evaluation mode: its BN statistics do not drift, and the
    module's train/eval flag is left as it was."""
    s, t = make_features(STUDENT, seed=12, dtype=torch.float32), make_features(TEACHER, seed=13, dtype=torch.float32)
    loss_fn = FT(FeatureShapes.of(s), FeatureShapes.of(t)).train()
    before = {k: v.clone() for k, v in loss_fn.paraphraser.state_dict().items()}
    loss_fn(s, t, ctx_for(s))["ft"].backward()
    assert loss_fn.paraphraser.training
    after = loss_fn.paraphraser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    loss_fn.pretrain_loss(s, t, ctx_for(s))  # pre-training does update them
    assert not torch.equal(before["encoder.1.running_mean"], loss_fn.paraphraser.state_dict()["encoder.1.running_mean"])


def np_ab(src: np.ndarray, tgt: np.ndarray, m: float = 1.0) -> float:
    off = (src > -m) & (tgt <= 0)
    on = (src <= m) & (tgt > 0)
    return float(((src + m) ** 2 * off + (src - m) ** 2 * on).sum())


def test_ab_golden_pretraining_with_identity_and_conv_connectors():
    # stage 1 identical shapes (identity connector); stages 2, 3: student 16x8x8 vs teacher 64x4x4 etc.
    s_shapes = [(3, 16, 16), (4, 8, 8), (16, 8, 8), (8, 7, 7)]
    t_shapes = [(3, 16, 16), (4, 8, 8), (64, 4, 4), (12, 4, 4)]
    s = make_features(s_shapes, seed=11, batch=3)
    t = make_features(t_shapes, seed=12, batch=3)
    loss_fn = AB(FeatureShapes.of(s), FeatureShapes.of(t)).double()
    assert isinstance(loss_fn.connectors[0], nn.Identity)
    p = set_params(loss_fn, seed=13)
    expected = 0.0
    for k, w in zip(range(3), (0.25, 0.5, 1.0)):
        x = np_(s.preact_stages[k + 1])
        if k > 0:
            x = np_regressor(x, t_shapes[k + 1], p[f"connectors.{k}.conv.weight"], p[f"connectors.{k}.bn.weight"],
                             p[f"connectors.{k}.bn.bias"])
        batch = 3
        expected += w * np_ab(x, np_(t.preact_stages[k + 1])) / batch * 3 / 1000  # CRD code's 3/1000 scale
    assert loss_fn.pretrain_loss(s, t, ctx_for(s)).item() == pytest.approx(expected, rel=1e-10)

    # main stage: 0 as in the CRD code, unless main_stage=True (then weight * the same sum)
    assert loss_fn(s, t, ctx_for(s))["ab"].item() == 0.0
    loss_fn.main_stage, loss_fn.weight = True, 2.0
    assert loss_fn(s, t, ctx_for(s))["ab"].item() == pytest.approx(2.0 * expected, rel=1e-10)
    student = nn.Linear(2, 2)
    assert loss_fn.pretrain_modules(student) == [student, loss_fn]


def test_fsp_golden():
    shapes = [(3, 8, 8), (4, 8, 8), (5, 4, 4), (6, 2, 2)]
    s = make_features(shapes, seed=14)
    t = make_features([(3, 8, 8), (4, 4, 4), (5, 4, 4), (6, 1, 1)], seed=15)  # spatial sizes may differ
    loss_fn = FSP(FeatureShapes.of(s), FeatureShapes.of(t), main_stage=True)

    def grams(f):
        out = []
        for k in range(len(f.stages) - 1):
            bot, top = np_common(np_(f.stages[k]), np_(f.stages[k + 1]))
            b, c = bot.reshape(bot.shape[0], bot.shape[1], -1), top.reshape(top.shape[0], top.shape[1], -1)
            out.append(np.einsum("nid,njd->nij", c, b) / b.shape[2])
        return out

    expected = sum(((gs - gt) ** 2).mean() for gs, gt in zip(grams(s), grams(t)))
    assert loss_fn.pretrain_loss(s, t, ctx_for(s)).item() == pytest.approx(expected, rel=1e-10)
    assert loss_fn(s, t, ctx_for(s))["fsp"].item() == pytest.approx(5.0 * expected, rel=1e-10)
    loss_fn.main_stage = False
    assert loss_fn(s, t, ctx_for(s))["fsp"].item() == 0.0
    with pytest.raises(NotImplementedError):
        loss_fn.spot_loss(0, s.stages[1], t.stages[1], ctx_for(s))


def np_kdsvd(s: Features, t: Features, k: int) -> float:
    def top(f, n):
        x = np_(f)
        x = x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)
        _, sv, vh = np.linalg.svd(x, full_matrices=False)
        v = vh.transpose(0, 2, 1)[:, :, :n]
        return v, np_normalize(sv[:, :n], 1)

    total, prev_s, prev_t = 0.0, None, None
    for fs, ft in zip(s.stages[1:], t.stages[1:]):
        vt, st = top(ft, k)
        for n in range(vt.shape[0]):  # sign: largest-magnitude entry positive
            for j in range(k):
                col = vt[n, :, j]
                vt[n, :, j] = col * np.sign(col[np.argmax(np.abs(col))])
        vs, _ = top(fs, k + 3)
        cos = np.einsum("nci,ncj->nij", vs, vt)
        aligned = np.zeros_like(vt)
        for n in range(vt.shape[0]):
            for j in range(k):
                i = np.argmax(np.abs(cos[n, :, j]))
                aligned[n, :, j] = vs[n, :, i] * np.sign(cos[n, i, j])
        vs, vt = aligned * st[:, None, :], vt * st[:, None, :]
        if prev_s is not None:
            rs = np.exp(-(vs[:, :, None, :] - prev_s[:, None, :, :]) ** 2 / 8)
            rt = np.exp(-(vt[:, :, None, :] - prev_t[:, None, :, :]) ** 2 / 8)
            total += ((rs - rt) ** 2).sum()
        prev_s, prev_t = vs, vt
    return total / s.logits.shape[0]


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_golden(k):
    s = make_features([(3, 8, 8), (6, 8, 8), (7, 4, 4), (8, 3, 3)], seed=16, batch=3)
    t = make_features([(3, 8, 8), (6, 4, 4), (7, 4, 4), (8, 2, 2)], seed=17, batch=3)
    loss = KDSVD(FeatureShapes.of(s), FeatureShapes.of(t), k=k)(s, t, ctx_for(s))["kdsvd"]
    assert loss.item() == pytest.approx(np_kdsvd(s, t, k), rel=1e-8)


def test_kdsvd_is_finite_with_degenerate_singular_values():
    s = make_features([(3, 8, 8), (6, 4, 4), (6, 4, 4), (8, 2, 2)], seed=18)
    t = make_features([(3, 8, 8), (6, 4, 4), (6, 4, 4), (8, 2, 2)], seed=19)
    stages = [x.clone() for x in s.stages]
    stages[2] = torch.zeros_like(stages[2])                     # all singular values 0
    stages[3] = stages[3][:, :1].expand_as(stages[3]).clone()   # rank 1: repeated zeros
    s = Features(s.logits, [x.float().requires_grad_() for x in stages], s.preact_stages, s.pooled)
    t = t.detach()
    t = Features(t.logits.float(), [x.float() for x in t.stages], t.preact_stages, t.pooled)
    loss = KDSVD(FeatureShapes.of(s), FeatureShapes.of(t))(s, t, ctx_for(s))["kdsvd"]
    loss.backward()
    assert torch.isfinite(loss)
    for x in s.stages[1:]:
        assert x.grad is not None and torch.isfinite(x.grad).all()


class _TeacherWithBNs(nn.Module):
    """Stands in for a ContractModel: preact_bns() per stage output (stem first)."""

    def __init__(self, channels: list[int], seed: int, none_at: int | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in channels)
        with torch.no_grad():
            for bn in self.bns:
                bn.weight.copy_(torch.rand(bn.num_features, generator=g) * 2 - 0.5)  # some negative, some ~0
                bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 2)
        self.none_at = none_at

    def preact_bns(self):
        return [None if k in (0, self.none_at) else bn for k, bn in enumerate(self.bns)]


@pytest.mark.parametrize("std, mean", [(1.0, 0.0), (0.5, 1.0), (2.0, -1.5), (-0.7, 0.3), (1.0, 4.0), (0.0, -2.0)])
def test_ofd_margin_is_the_mean_of_the_negative_part(std, mean):
    s = abs(std)
    if s == 0:
        expected = min(mean, 0.0)
    else:
        x = np.linspace(mean - 12 * s, 0.0, 400001)  # E[x | x < 0] by numerical integration
        pdf = np.exp(-((x - mean) / s) ** 2 / 2)

        def integral(y):  # trapezoid rule
            return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())

        tail = integral(pdf) / (s * math.sqrt(2 * math.pi))
        expected = integral(x * pdf) / integral(pdf) if tail > 0.001 else -3 * s
    assert negative_margin(std, mean) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_ofd_golden():
    s_shapes = [(3, 8, 8), (4, 8, 8), (16, 8, 8), (8, 7, 7)]
    t_shapes = [(3, 8, 8), (5, 8, 8), (64, 4, 4), (12, 4, 4)]
    s, t = make_features(s_shapes, seed=20, batch=3), make_features(t_shapes, seed=21, batch=3)
    teacher = _TeacherWithBNs([c for c, _, _ in t_shapes], seed=22)
    loss_fn = OFD(FeatureShapes.of(s), FeatureShapes.of(t), teacher_model=teacher).double()
    p = set_params(loss_fn, seed=23)
    loss = loss_fn(s, t, ctx_for(s))["ofd"]
    expected = 0.0
    for k, w in zip(range(3), (0.25, 0.5, 1.0)):
        bn = teacher.bns[k + 1]
        margin = np.array([negative_margin(a, b) for a, b in zip(bn.weight.tolist(), bn.bias.tolist())])
        margin = margin.astype(np.float32).astype(np.float64)[None, :, None, None]  # stored as a float32 buffer
        src = np_bn(np_conv(np_(s.preact_stages[k + 1]), p[f"connectors.{k}.0.weight"]),
                    p[f"connectors.{k}.1.weight"], p[f"connectors.{k}.1.bias"])
        src, tgt = np_common(src, np_(t.preact_stages[k + 1]))
        d = ((src - margin) ** 2 * ((src > margin) & (tgt <= margin))
             + (src - tgt) ** 2 * ((src > tgt) & (tgt > margin) & (tgt <= 0))
             + (src - tgt) ** 2 * (tgt > 0))
        expected += w * d.mean(axis=0).sum()
    assert loss.item() == pytest.approx(0.001 * expected, rel=1e-10)


def test_hcl_golden():
    g = torch.Generator().manual_seed(24)
    fs = [torch.randn(2, 3, h, h, generator=g, dtype=torch.float64) for h in (8, 4, 2, 1)]
    ft = [torch.randn(2, 3, h, h, generator=g, dtype=torch.float64) for h in (8, 4, 2, 1)]
    expected = 0.0
    for a, b in zip(map(np_, fs), map(np_, ft)):
        h = a.shape[2]
        loss, cnt, tot = ((a - b) ** 2).mean(), 1.0, 1.0
        for lvl in (4, 2, 1):
            if lvl < h:
                cnt /= 2
                loss += cnt * ((np_pool(a, (lvl, lvl)) - np_pool(b, (lvl, lvl))) ** 2).mean()
                tot += cnt
        expected += loss / tot
    assert hierarchical_context_loss(fs, ft).item() == pytest.approx(expected, rel=1e-10)


def test_reviewkd_golden_and_warmup():
    s_shapes = [(3, 8, 8), (4, 8, 8), (6, 4, 4), (8, 2, 2)]
    t_shapes = [(3, 8, 8), (5, 8, 8), (7, 4, 4), (9, 4, 4)]  # last stage: teacher larger (2x2 -> 4x4)
    s = make_features(s_shapes, seed=25, pooled=8, batch=3)
    t = make_features(t_shapes, seed=26, pooled=10, batch=3)
    loss_fn = ReviewKD(FeatureShapes.of(s), FeatureShapes.of(t)).double()
    p = set_params(loss_fn, seed=27, scale=0.4)

    levels = [np_(x) for x in s.stages[1:]] + [np_(s.pooled)[:, :, None, None]]
    targets = [np_(x) for x in t.preact_stages[1:]] + [np_(t.pooled)[:, :, None, None]]
    out_sizes = [(8, 8), (4, 4), (4, 4), (1, 1)]
    outputs: list[np.ndarray] = [None] * 4  # type: ignore[list-item]
    residual = None
    for k in reversed(range(4)):
        a = f"abfs.{k}"
        x = np_bn(np_conv(levels[k], p[f"{a}.conv1.0.weight"]), p[f"{a}.conv1.1.weight"], p[f"{a}.conv1.1.bias"])
        if residual is not None:
            r = np_nearest(residual, x.shape[-2:])
            z = 1 / (1 + np.exp(-np_conv(np.concatenate([x, r], axis=1), p[f"{a}.att_conv.0.weight"],
                                         p[f"{a}.att_conv.0.bias"])))
            x = x * z[:, 0:1] + r * z[:, 1:2]
        if x.shape[-2:] != out_sizes[k]:
            x = np_nearest(x, out_sizes[k])
        y = np_conv(x, p[f"{a}.conv2.0.weight"], pad=1)
        outputs[k] = np_bn(y, p[f"{a}.conv2.1.weight"], p[f"{a}.conv2.1.bias"])
        residual = x
    hcl = 0.0
    for a, b in zip(outputs, targets):
        h = a.shape[2]
        loss, cnt, tot = ((a - b) ** 2).mean(), 1.0, 1.0
        for lvl in (4, 2, 1):
            if lvl < h:
                cnt /= 2
                loss += cnt * ((np_pool(a, (lvl, lvl)) - np_pool(b, (lvl, lvl))) ** 2).mean()
                tot += cnt
        hcl += loss / tot

    full = loss_fn(s, t, ctx_for(s, progress=25.0))["reviewkd"].item()
    assert full == pytest.approx(5.0 * hcl, rel=1e-10)
    assert loss_fn(s, t, ctx_for(s, progress=5.0))["reviewkd"].item() == pytest.approx(5.0 * hcl * 0.25, rel=1e-10)
    assert loss_fn(s, t, ctx_for(s, progress=0.0))["reviewkd"].item() == 0.0
    assert ReviewKD(FeatureShapes.of(s), FeatureShapes.of(t), warmup_epochs=0).warmup_factor(ctx_for(s)) == 1.0


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------
class _Call(nn.Module):
    """Wraps ``method(distiller, s, t, ctx)`` as a forward, so torch.func.functional_call can swap parameters."""

    def __init__(self, inner: nn.Module, method) -> None:
        super().__init__()
        self.inner = inner
        self.method = method

    def forward(self, s: Features, t: Features, ctx: DistillContext) -> torch.Tensor:
        return self.method(self.inner, s, t, ctx)


def _gradcheck(loss_fn: nn.Module, s: Features, t: Features, progress: float = 30.0, method=None,
               frozen: str = "") -> None:
    """gradcheck (float64) of the summed loss w.r.t. the student's tensors and the distiller's parameters
    (except those under ``frozen``, which the loss deliberately does not train)."""
    method = method or (lambda m, a, b, c: sum(m(a, b, c).values()))
    wrapper = _Call(loss_fn.double(), method)
    named = [(n, p) for n, p in wrapper.named_parameters() if not (frozen and n.startswith(frozen))]
    names = [n for n, _ in named]
    params = [p.detach().clone().requires_grad_() for _, p in named]
    n_st = len(s.stages)
    inputs = ([x.detach().clone().requires_grad_() for x in s.stages]
              + [x.detach().clone().requires_grad_() for x in s.preact_stages]
              + [s.pooled.detach().clone().requires_grad_()])
    ctx = ctx_for(s, progress)

    def fn(*args):
        rest = args[len(names):]
        sf = Features(s.logits, list(rest[:n_st]), list(rest[n_st:2 * n_st]), rest[-1])
        return torch.func.functional_call(wrapper, dict(zip(names, args[:len(names)])), (sf, t, ctx))

    assert torch.autograd.gradcheck(fn, (*params, *inputs), eps=1e-6, atol=1e-5, rtol=1e-3)


SMALL_S = [(2, 6, 6), (3, 6, 6), (4, 5, 5), (5, 3, 3)]
SMALL_T = [(2, 6, 6), (4, 6, 6), (6, 3, 3), (5, 2, 2)]


@pytest.mark.parametrize("make", [
    lambda ss, ts: FitNet(ss, ts),
    lambda ss, ts: AT(ss, ts),
    lambda ss, ts: NST(ss, ts),
    lambda ss, ts: FT(ss, ts),
    lambda ss, ts: AB(ss, ts, main_stage=True, margin=0.3),
    lambda ss, ts: ReviewKD(ss, ts),
], ids=["fitnet", "at", "nst", "ft", "ab", "reviewkd"])
def test_gradcheck(make):
    s, t = make_features(SMALL_S, seed=30, pooled=4), make_features(SMALL_T, seed=31, pooled=5)
    _gradcheck(make(FeatureShapes.of(s), FeatureShapes.of(t)), s, t, frozen="inner.paraphraser")


def test_gradcheck_ofd():
    s, t = make_features(SMALL_S, seed=32), make_features(SMALL_T, seed=33)
    teacher = _TeacherWithBNs([c for c, _, _ in SMALL_T], seed=34)
    _gradcheck(OFD(FeatureShapes.of(s), FeatureShapes.of(t), teacher_model=teacher), s, t)


def test_gradcheck_pretraining_losses():
    s, t = make_features(SMALL_S, seed=35), make_features(SMALL_T, seed=36)
    ss, ts = FeatureShapes.of(s), FeatureShapes.of(t)
    _gradcheck(FT(ss, ts), s, t, method=lambda m, a, b, c: m.pretrain_loss(b, b, c))  # paraphraser params
    _gradcheck(AB(ss, ts, margin=0.3), s, t, method=lambda m, a, b, c: m.pretrain_loss(a, b, c))
    same = make_features(SMALL_S, seed=37)
    _gradcheck(FSP(ss, FeatureShapes.of(same)), s, same, method=lambda m, a, b, c: m.pretrain_loss(a, b, c))


def test_gradcheck_kdsvd():
    s = make_features([(2, 4, 4), (5, 4, 4), (6, 3, 3), (6, 3, 3)], seed=38)
    t = make_features([(2, 4, 4), (5, 3, 3), (6, 3, 3), (6, 2, 2)], seed=39)
    _gradcheck(KDSVD(FeatureShapes.of(s), FeatureShapes.of(t)), s, t)


def test_ft_paraphraser_is_frozen_in_the_main_stage():
    s, t = make_features(STUDENT, seed=40, dtype=torch.float32), make_features(TEACHER, seed=41, dtype=torch.float32)
    loss_fn = FT(FeatureShapes.of(s), FeatureShapes.of(t))
    assert loss_fn.pretrain_modules(nn.Linear(1, 1)) == [loss_fn.paraphraser]
    loss_fn(s, t, ctx_for(s))["ft"].backward()
    assert all(p.grad is None for p in loss_fn.paraphraser.parameters())
    assert all(p.grad is not None for p in loss_fn.translator.parameters())


# ---------------------------------------------------------------------------------------------
# finite on batch 2, on subsets via spot_loss, on mismatched shapes
# ---------------------------------------------------------------------------------------------
MNIST_S = [(8, 28, 28), (16, 28, 28), (32, 14, 14), (64, 7, 7)]     # 28x28-derived sizes
MNIST_T = [(16, 28, 28), (32, 14, 14), (64, 7, 7), (128, 4, 4)]


def _build(name: str, ss: FeatureShapes, ts: FeatureShapes):
    cls = DISTILLERS.get(name).factory
    if name == "ofd":
        return cls(ss, ts, teacher_model=_TeacherWithBNs([s[0] for s in ts.stages], seed=50))
    if name == "ab":
        return cls(ss, ts, main_stage=True)
    if name == "fsp":
        return cls(ss, ts, main_stage=True)
    return cls(ss, ts)


@pytest.mark.parametrize("name", ["fitnet", "at", "nst", "ft", "ab", "ofd", "reviewkd"])
def test_finite_batch2_and_subset_spots_with_mismatched_shapes(name):
    s = make_features(MNIST_S, seed=51, pooled=64, dtype=torch.float32)
    t = make_features(MNIST_T, seed=52, pooled=128, dtype=torch.float32)
    s = Features(s.logits, [x.requires_grad_() for x in s.stages], [x.requires_grad_() for x in s.preact_stages],
                 s.pooled.requires_grad_())
    loss_fn = _build(name, FeatureShapes.of(s), FeatureShapes.of(t))
    ctx = ctx_for(s, progress=40.0)
    terms = loss_fn(s, t, ctx)
    total = sum(terms.values())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    grads = [x.grad for x in [*s.stages, *s.preact_stages, s.pooled] if x.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if name == "reviewkd":
        with pytest.raises(NotImplementedError):
            loss_fn.spot_loss(0, s.stages[1], t.stages[1], ctx)
        return
    mask = torch.tensor([False, True])
    sub_s, sub_t, sub_ctx = s.detach().subset(mask), t.subset(mask), ctx.subset(mask)
    spots = list(zip(loss_fn.spot_features(sub_s), loss_fn.spot_features(sub_t, teacher=True)))
    assert len(spots) == {"fitnet": 1, "ft": 1}.get(name, 3)
    parts = [loss_fn.spot_loss(i, a, b, sub_ctx) for i, (a, b) in enumerate(spots)]
    assert all(torch.isfinite(p) for p in parts)
    assert sum(parts).item() > 0


@pytest.mark.parametrize("name", ["fsp", "kdsvd"])
def test_finite_batch2_equal_width_methods(name):
    s = make_features(MNIST_S, seed=53, dtype=torch.float32)
    t = make_features([(8, 28, 28), (16, 14, 14), (32, 7, 7), (64, 4, 4)], seed=54, dtype=torch.float32)
    loss_fn = _build(name, FeatureShapes.of(s), FeatureShapes.of(t))
    value = sum(loss_fn(s, t, ctx_for(s)).values())
    assert torch.isfinite(value) and value.item() > 0
    with pytest.raises(NotImplementedError):
        loss_fn.spot_loss(0, s.stages[1], t.stages[1], ctx_for(s))


@pytest.mark.parametrize("s_shape, t_shape", [
    ((16, 8, 8), (64, 4, 4)), ((16, 7, 7), (64, 4, 4)), ((16, 4, 4), (64, 7, 7)),
    ((16, 7, 7), (64, 3, 3)), ((16, 8, 8), (64, 8, 8)), ((16, 8, 6), (64, 4, 3)),
])
def test_regressor_adapts_channels_and_any_size_ratio(s_shape, t_shape):
    reg = ConvBNRegressor(s_shape, t_shape)
    assert reg(torch.randn(2, *s_shape)).shape == (2, *t_shape)


# ---------------------------------------------------------------------------------------------
# errors a user can cause
# ---------------------------------------------------------------------------------------------
def test_stage_count_mismatch_is_a_shape_error():
    ss = FeatureShapes.of(make_features(STUDENT))
    ts = FeatureShapes.of(make_features(TEACHER[:3]))
    for name in ["at", "nst", "ab", "reviewkd", "kdsvd", "fsp"]:
        with pytest.raises(ShapeError, match="same number of stages"):
            DISTILLERS.get(name).factory(ss, ts)
    FitNet(ss, ts)  # one stage each: fine
    FT(ss, ts)


def test_channel_constraints_are_shape_errors():
    ss, ts = FeatureShapes.of(make_features(STUDENT)), FeatureShapes.of(make_features(TEACHER))
    with pytest.raises(ShapeError, match="equal channel counts"):
        FSP(ss, ts)
    with pytest.raises(ShapeError, match="equal channel counts"):
        KDSVD(ss, ts)


def test_non_map_features_are_shape_errors():
    vec = FeatureShapes(stages=[(16,), (32,), (64,)], pooled=64, num_classes=10)
    maps = FeatureShapes(stages=[(16, 8, 8), (32, 4, 4), (64, 2, 2)], pooled=64, num_classes=10)
    for cls in (FitNet, AT, NST, FT, AB):
        with pytest.raises(ShapeError, match=r"\(C, H, W\)"):
            cls(vec, maps)


def test_ofd_without_a_teacher_bn_is_a_shape_error():
    ss, ts = FeatureShapes.of(make_features(STUDENT)), FeatureShapes.of(make_features(TEACHER))
    teacher = _TeacherWithBNs([c for c, _, _ in TEACHER], seed=60, none_at=2)
    with pytest.raises(ShapeError, match="stage-2"):
        OFD(ss, ts, teacher_model=teacher)
    with pytest.raises(ConfigError):
        OFD(ss, ts)


def test_bad_options_are_config_errors():
    ss, ts = FeatureShapes.of(make_features(STUDENT)), FeatureShapes.of(make_features(TEACHER))
    with pytest.raises(ConfigError):
        AT(ss, ts, p=0)
    with pytest.raises(ConfigError, match="hint_layer"):
        FitNet(ss, ts, hint_layer=7)
    with pytest.raises(ConfigError):
        AB(ss, ts, margin=-1)
    with pytest.raises(ConfigError):
        KDSVD(ss, ts, k=0)
    with pytest.raises(ConfigError):
        ReviewKD(ss, ts, warmup_epochs=-1)
    assert FitNet(ss, ts, hint_layer=1).spot_features(make_features(STUDENT))[0].shape[1:] == STUDENT[1]


@pytest.mark.parametrize("name", ["fitnet", "at", "nst", "ft", "ab", "fsp", "kdsvd", "ofd", "reviewkd"])
def test_bf16_autocast_losses_are_float32_and_finite(name):
    shapes = [(8, 16, 16), (8, 16, 16), (16, 8, 8), (32, 4, 4)]
    s = make_features(shapes, seed=70, pooled=32, dtype=torch.bfloat16)
    t = make_features(shapes, seed=71, pooled=32, dtype=torch.bfloat16)
    loss_fn = _build(name, FeatureShapes.of(s), FeatureShapes.of(t))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = sum(loss_fn(s, t, ctx_for(s, progress=30.0)).values())
    assert value.dtype == torch.float32 and torch.isfinite(value) and value.item() > 0
