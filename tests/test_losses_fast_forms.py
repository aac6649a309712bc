"""The cheaper forms of KD-SVD, OFD, VID and AT (issue 26) against the direct formulas they replace:
the same numbers (float64: to rounding; OFD elementwise exactly), the same gradients, bf16 and
channels_last inputs handled without changing the result beyond bf16 noise. The golden tests in
test_losses_feature.py / test_losses_relation.py check the losses themselves; these check each rewrite.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import adakd.losses  # noqa: F401  (registers every distiller)
from adakd.losses.at import AT, channel_power_mean
from adakd.losses.connectors import pool_to_common, pool_to_common_precise
from adakd.losses.kdsvd import KDSVD, top_right_singular
from adakd.losses.ofd import partial_l2
from adakd.losses.vid import VID
from adakd.models.contract import Features, FeatureShapes

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]


def svd_top(f: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The direct form: a thin SVD of each sample's (H*W) x C map (what KD-SVD computed before)."""
    x = f.reshape(f.shape[0], f.shape[1], -1).transpose(1, 2)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    return F.normalize(vh.transpose(1, 2)[:, :, :n], dim=1), F.normalize(s[:, :n], dim=1)


# ---------------------------------------------------------------------------------------------
# KD-SVD: eigh of the smaller Gram matrix = the SVD's top right singular vectors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, n", [
    ((3, 5, 4, 4), 2),   # C <= H*W: eigh of X^T X
    ((3, 8, 2, 2), 3),   # C > H*W: eigh of X X^T, v = X^T u / s
    ((3, 8, 2, 2), 6),   # n above min(H*W, C) = 4: capped as a thin SVD caps it
    ((2, 6, 3, 3), 4),
])
def test_top_right_singular_equals_the_svd_up_to_sign(shape, n):
    f = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).relu()
    v, s = top_right_singular(f, n)
    v_ref, s_ref = svd_top(f, n)
    assert v.shape == v_ref.shape and s.shape == s_ref.shape
    assert v.shape[-1] == min(n, shape[1], shape[2] * shape[3])
    cos = (v * v_ref).sum(dim=1)  # [B, n]: +-1 when the columns agree up to sign
    torch.testing.assert_close(cos.abs(), torch.ones_like(cos), rtol=0, atol=1e-10)
    torch.testing.assert_close(v * cos.sign().unsqueeze(1), v_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 5, 4, 4), (2, 8, 2, 2)])
def test_top_right_singular_has_the_svds_gradient(shape):
    """A sign-invariant function of the top vectors (and values) has the same gradient either way."""
    f = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).relu()
    probe = torch.randn(shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def grad_of(fn):
        x = f.clone().requires_grad_()
        v, s = fn(x, 3)
        ((v * probe.view(1, -1, 1)).sum(dim=1).pow(2) * torch.arange(1.0, v.shape[-1] + 1)).sum().backward()
        return x.grad

    torch.testing.assert_close(grad_of(top_right_singular), grad_of(svd_top), rtol=1e-8, atol=1e-10)


def test_top_right_singular_reads_channels_last_maps_as_nchw():
    f = torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(4)).relu()
    v, s = top_right_singular(f, 2)
    v_cl, s_cl = top_right_singular(f.contiguous(memory_format=torch.channels_last), 2)
    torch.testing.assert_close(v_cl, v)
    torch.testing.assert_close(s_cl, s)


def _resnet_like_features(dtype: torch.dtype, channels_last: bool, seed: int) -> Features:
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(4, c, h, h, generator=g).relu() for c, h in [(4, 8), (8, 8), (16, 4), (32, 2)]]
    if channels_last:
        maps = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    maps = [m.to(dtype) for m in maps]
    return Features(logits=torch.randn(4, 5, generator=g), stages=maps, preact_stages=maps,
                    pooled=torch.randn(4, 8, generator=g))


def test_kdsvd_under_bf16_autocast_on_channels_last_maps_matches_float32():
    """The probe's usual pick: bf16 channels_last maps; the Gram matrices and eigh run in float32, so the
    loss is the float32 loss of the bf16-rounded maps, and the gradient comes back as bf16 in the map's layout."""
    s16, t16 = _resnet_like_features(torch.bfloat16, True, 5), _resnet_like_features(torch.bfloat16, True, 6)
    for x in s16.stages:
        x.requires_grad_()
    loss_fn = KDSVD(FeatureShapes.of(s16), FeatureShapes.of(t16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = loss_fn(s16, t16, None)["kdsvd"]
    s32 = Features(s16.logits, [x.detach().float() for x in s16.stages], s16.preact_stages, s16.pooled)
    t32 = Features(t16.logits, [x.float() for x in t16.stages], t16.preact_stages, t16.pooled)
    loss32 = loss_fn(s32, t32, None)["kdsvd"]
    assert loss16.dtype == torch.float32
    assert loss16.item() == pytest.approx(loss32.item(), rel=1e-5)
    loss16.backward()
    for x in s16.stages[1:]:
        assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


# ---------------------------------------------------------------------------------------------
# OFD: one squared difference against the target clipped at the margin
# ---------------------------------------------------------------------------------------------
def three_term_partial_l2(source, target, margin):
    """The paper's code: three masked squared differences summed."""
    d = ((source - margin).pow(2) * ((source > margin) & (target <= margin))
         + (source - target).pow(2) * ((source > target) & (target > margin) & (target <= 0))
         + (source - target).pow(2) * (target > 0))
    return d.mean(dim=0).sum()


def test_partial_l2_is_the_three_term_form_elementwise_including_ties():
    g = torch.Generator().manual_seed(7)
    grid = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.5])  # values on which s, t and m tie exactly
    source = grid[torch.randint(0, 6, (4, 3, 5, 5), generator=g)].double()
    target = grid[torch.randint(0, 6, (4, 3, 5, 5), generator=g)].double()
    source = source + torch.randn(source.shape, generator=g, dtype=torch.float64) * (torch.rand(source.shape, generator=g) < 0.5)
    margin = torch.tensor([-1.0, -0.5, 0.0], dtype=torch.float64).view(1, 3, 1, 1)  # m <= 0 always (E[x | x < 0])
    for b in range(4):  # per sample: exact equality of every element's contribution
        s, t = source[b:b + 1], target[b:b + 1]
        assert partial_l2(s, t, margin).item() == three_term_partial_l2(s, t, margin).item()
    a = source.clone().requires_grad_()
    b_ = source.clone().requires_grad_()
    partial_l2(a, target, margin).backward()
    three_term_partial_l2(b_, target, margin).backward()
    assert torch.equal(a.grad, b_.grad)


def test_partial_l2_promotes_a_bf16_source_like_a_float32_copy():
    g = torch.Generator().manual_seed(8)
    source = torch.randn(2, 4, 3, 3, generator=g).to(torch.bfloat16)
    target = torch.randn(2, 4, 3, 3, generator=g).to(torch.bfloat16)
    margin = -torch.rand(1, 4, 1, 1, generator=g)
    got = partial_l2(source, target, margin)
    assert got.dtype == torch.float32
    assert got.item() == three_term_partial_l2(source.float(), target.float(), margin).item()


# ---------------------------------------------------------------------------------------------
# VID: regressor convs in the autocast precision, likelihood in float32
# ---------------------------------------------------------------------------------------------
def test_vid_regressor_runs_in_bf16_under_autocast_and_the_likelihood_in_float32():
    s16, t16 = _resnet_like_features(torch.bfloat16, True, 9), _resnet_like_features(torch.bfloat16, True, 10)
    vid = VID(FeatureShapes.of(s16), FeatureShapes.of(t16))
    conv_dtypes = []
    hooks = [m.register_forward_hook(lambda mod, i, o: conv_dtypes.append(o.dtype))
             for m in vid.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = vid(s16, t16, None)["vid"]
    for h in hooks:
        h.remove()
    assert conv_dtypes and set(conv_dtypes) == {torch.bfloat16}
    assert loss16.dtype == torch.float32
    s32 = Features(s16.logits, [x.float() for x in s16.stages], s16.preact_stages, s16.pooled)
    t32 = Features(t16.logits, [x.float() for x in t16.stages], t16.preact_stages, t16.pooled)
    assert loss16.item() == pytest.approx(vid(s32, t32, None)["vid"].item(), rel=1e-2)
    loss16.backward()
    assert all(r.alpha.grad is not None and torch.isfinite(r.alpha.grad).all() for r in vid.regressors)


# ---------------------------------------------------------------------------------------------
# AT: the channel power mean
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [2.0, 3.0])
def test_channel_power_mean_channels_last_bf16_matches_the_direct_float32_form(p):
    f = torch.randn(2, 16, 5, 5, generator=torch.Generator().manual_seed(11)).to(torch.bfloat16)
    direct = f.float().abs().pow(p).mean(dim=1)
    got = channel_power_mean(f.contiguous(memory_format=torch.channels_last), p)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-7)


def test_channel_power_mean_nchw_is_the_direct_form_exactly():
    f = torch.randn(2, 16, 5, 5, generator=torch.Generator().manual_seed(12))
    assert torch.equal(channel_power_mean(f, 2.0), f.abs().pow(2.0).mean(dim=1))
    assert torch.equal(channel_power_mean(f, 3.0), f.abs().pow(3.0).mean(dim=1))


def test_at_loss_is_the_same_on_channels_last_maps():
    s, t = _resnet_like_features(torch.float32, False, 13), _resnet_like_features(torch.float32, False, 14)
    s_cl, t_cl = _resnet_like_features(torch.float32, True, 13), _resnet_like_features(torch.float32, True, 14)
    at = AT(FeatureShapes.of(s), FeatureShapes.of(t))
    assert at(s_cl, t_cl, None)["at"].item() == pytest.approx(at(s, t, None)["at"].item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# pooling only where the sizes differ
# ---------------------------------------------------------------------------------------------
def test_pool_to_common_precise_copies_nothing_at_one_size_and_pools_in_float32_otherwise():
    a = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    b = torch.randn(2, 5, 4, 4).to(torch.bfloat16)
    same_a, same_b = pool_to_common_precise(a, b)
    assert same_a is a and same_b is b
    big = torch.randn(2, 5, 8, 8).to(torch.bfloat16)
    pa, pb = pool_to_common_precise(a, big)
    ra, rb = pool_to_common(a.float(), big.float())
    assert pa.dtype == pb.dtype == torch.float32
    assert torch.equal(pa, ra) and torch.equal(pb, rb)


# ---------------------------------------------------------------------------------------------
# benchmarks/distiller_step.py: the ratios it reports and the ref swap
# ---------------------------------------------------------------------------------------------
def _bench_module():
    spec = importlib.util.spec_from_file_location("distiller_step", REPO / "benchmarks" / "distiller_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_distiller_step_summary_is_the_median_of_paired_window_ratios():
    bench = _bench_module()
    seconds = {"kd": [1.0, 2.0, 1.0], "kdsvd": [3.0, 4.0, 5.0], "kdsvd@old": [6.0, 6.0, 5.0]}
    rows = bench.summarise(seconds, images_per_window=64, ref="old")
    assert rows["kd"]["cost_vs_kd"] == 1.0
    assert rows["kdsvd"]["cost_vs_kd"] == 3.0             # median of 3/1, 4/2, 5/1
    assert rows["kdsvd"]["new_over_ref"] == 1.5           # median of 6/3, 6/4, 5/5
    assert rows["kdsvd"]["images_per_s"]["median"] == 16.0  # 64 / 4 s
    table = bench.format_rows(rows, "old")
    assert "| kdsvd | 16.0 [" in table and "3.00x | 1.50x |" in table
    env = {"cpu": "X", "cpu_flags": {"amx_bf16": False, "avx512_bf16": True, "avx2": True},
           "cpu_capability": "AVX512", "isa_limits": {}}
    assert bench.cpu_class(env) == "X; AVX512; avx512_bf16, avx2, no AMX"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_distiller_step_swaps_in_the_loss_classes_of_a_git_ref():
    bench = _bench_module()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    s, t = _resnet_like_features(torch.float64, False, 15), _resnet_like_features(torch.float64, False, 16)
    vid = VID(FeatureShapes.of(s), FeatureShapes.of(t)).double()
    before = vid(s, t, None)["vid"].item()
    assert bench.swap_to_ref(vid, "HEAD") == 1 + len(vid.regressors)  # VID and its GaussianRegressors
    assert type(vid).__module__ != "adakd.losses.vid"
    assert vid(s, t, None)["vid"].item() == pytest.approx(before, rel=1e-12)
