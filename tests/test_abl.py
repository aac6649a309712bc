"""ABL (strategy "abl"): block-wise gradients against brute force, the exact hypergradient against
autograd through one unrolled SGD step (float64), the DARTS option against its definition, phases,
records, resume after a kill, composition with the distiller zoo."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from adakd.config import validate
from adakd.data import Batch
from adakd.engine.checkpoint import load_checkpoint
from adakd.engine.trainer import train
from adakd.errors import ConfigError
from adakd.losses.base import DistillContext
from adakd.losses.build import build_distiller
from adakd.models import build_model
from adakd.strategies import StrategyContext
from adakd.strategies.abl import ABLStrategy
from adakd.strategies.abl_gradients import abl_forward, apply_mixed, local_losses, separate_gradients
from adakd.strategies.abl_heads import AuxHead
from tiny_runs import Killed, apply_dotted, kill_after_steps

SIZE = 8
ALPHA = 0.7


class _ValSentinel:
    """Stands in for a validation loader; the tests patch the strategy's val batch."""


def make(losses, dtype=torch.float64, options=None, seed=0, val=True):
    torch.manual_seed(seed)
    student = build_model("resnet8", num_classes=10, in_channels=1, image_size=SIZE, widths=[8, 8, 16]).to(dtype)
    teacher = build_model("resnet8", num_classes=10, in_channels=1, image_size=SIZE, widths=[8, 16, 16]).to(dtype)
    teacher.eval()
    distiller = build_distiller(losses, student, teacher, num_samples=64)
    if distiller is not None:
        distiller.to(dtype)
    ctx = StrategyContext(student=student, teacher=teacher, distiller=distiller, ce_weight=ALPHA,
                          device=torch.device("cpu"), precision="fp32", num_classes=10,
                          options=dict(options or {}), epochs=1, steps_per_epoch=4, seed=seed,
                          val_loader=_ValSentinel() if val else None)
    return ABLStrategy(ctx)


def batch(n=8, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 1, SIZE, SIZE, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g),
                 torch.arange(n))


def dctx(b):
    return DistillContext(labels=b.y, indices=b.index, epoch=30, step=0, epochs_total=40, progress=30.0)


def brute_force(s: ABLStrategy, b: Batch, probs: torch.Tensor, student_error="local"):
    """The formula of methods.md, block by block, with plain forward passes of the model's own methods."""
    student, heads, d = s.student, s.heads, s.distiller
    with torch.no_grad():
        t = s.teacher.forward_features(b.x)
    units = list(student.units)
    nb = len(units) - 1
    expected = {}

    def kd_loss():
        return sum(d(student.forward_features(b.x), t, dctx(b)).values())

    def final_ce():
        return F.cross_entropy(student(b.x), b.y)

    for blk in range(nb):
        params = list(units[blk + 1].parameters()) + (list(units[0].parameters()) if blk == 0 else [])
        if blk == nb - 1:
            params = list(units[-1].parameters()) + list(student.fc.parameters())
        g_kd = [torch.zeros_like(q) if g is None else g
                for q, g in zip(params, torch.autograd.grad(kd_loss(), params, allow_unused=True))]
        if blk == nb - 1:
            g_s = torch.autograd.grad(ALPHA * final_ce(), params)
            for q, a, c in zip(params, g_s, g_kd):
                expected[q] = a + c
            continue
        if student_error == "global":
            g_s = torch.autograd.grad(ALPHA * final_ce(), params)
        else:
            h = student.run_units(b.x, 0, blk + 2)
            hp = list(heads[blk].parameters())
            g_all = torch.autograd.grad(ALPHA * F.cross_entropy(heads[blk](h), b.y), params + hp)
            g_s = g_all[:len(params)]
            for q, g in zip(hp, g_all[len(params):]):
                expected[q] = probs[blk, 0] * g
        for q, a, c in zip(params, g_s, g_kd):
            expected[q] = probs[blk, 0] * a + probs[blk, 1] * c
    conn = [q for q in d.parameters() if q.requires_grad]
    if conn:
        for q, g in zip(conn, torch.autograd.grad(kd_loss(), conn, allow_unused=True)):
            expected[q] = torch.zeros_like(q) if g is None else g
    return expected


def assert_grads(expected):
    assert expected
    for q, g in expected.items():
        got = torch.zeros_like(q) if q.grad is None else q.grad
        torch.testing.assert_close(got, g, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("losses,error", [({"dkd": {}}, "local"), ({"fitnet": {}, "at": {}}, "local"),
                                          ({"aekt": {}}, "local"), ({"dkd": {}}, "global")])
def test_blockwise_gradients_match_brute_force(losses, error):
    """Both code paths (retrain: mixed_backward; search: separate + apply_mixed) give
    g1*alpha*dCE_local/dtheta_l + g2*dL_KD/dtheta_l per block, for random gammas."""
    s = make(losses, options={"student_error": error})
    b = batch()
    probs = torch.softmax(torch.randn(2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64), -1)
    expected = brute_force(s, b, probs, error)
    s.fixed = probs
    opt = torch.optim.SGD([q for m in s.trainable_modules() for q in m.parameters()], lr=0.0)
    s.train_step(b, dctx(b), opt)  # lr 0: the gradients stay in .grad, the parameters do not move
    assert_grads(expected)
    # the search path: gS and gKD apart, then mixed
    opt.zero_grad(set_to_none=True)
    t = s.teacher_features(b.x)
    p = abl_forward(s.student, b.x, s.heads)
    kd = sum(s.distiller(p.features, t, dctx(b)).values())
    ce = F.cross_entropy(p.logits, b.y)
    conn = [q for q in s.distiller.parameters() if q.requires_grad]
    grads = separate_gradients(p, kd, ce, local_losses(p, b.y), ALPHA, s.blocks, s.heads, conn, error)
    apply_mixed(grads, probs, s.blocks, s.heads, conn)
    assert_grads(expected)


def test_local_error_does_not_reach_earlier_blocks():
    s = make({"dkd": {}}, options={"gammas": [[1.0, 0.0], [1.0, 0.0]], "ablation": "no_distill"})
    b = batch()
    opt = torch.optim.SGD([q for m in s.trainable_modules() for q in m.parameters()], lr=0.0)
    s.train_step(b, dctx(b), opt)
    # block 0 (stem + unit 1) learns only from head 0: its gradient is head 0's CE gradient alone
    params = list(s.student.units[0].parameters()) + list(s.student.units[1].parameters())
    h = s.student.run_units(b.x, 0, 2)
    ref = torch.autograd.grad(ALPHA * F.cross_entropy(s.heads[0](h), b.y), params)
    for q, g in zip(params, ref):
        torch.testing.assert_close(q.grad, g, rtol=1e-9, atol=1e-12)


def _sgd_unrolled(theta, grads, buf, lr, mu, wd):
    """One SGD step with Nesterov momentum and weight decay, by hand (torch.optim.SGD's documented update)."""
    d = grads + wd * theta
    new_buf = mu * buf + d
    return theta - lr * (d + mu * new_buf)


def _setup_meta(hyper):
    s = make({"dkd": {}}, options={"warm_start_steps": 0, "hypergradient": hyper})
    with torch.no_grad():
        s.gamma.copy_(torch.randn(2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    params = [q for m in s.trainable_modules() for q in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(7)
    for q in params:  # populate the momentum buffers
        q.grad = torch.randn(q.shape, generator=g, dtype=q.dtype) * 0.01
    opt.step()
    vb = batch(8, seed=11)
    s._val_batch = lambda step, size: vb
    return s, opt, vb


def _unrolled_val_loss_fn(s, opt, b, vb):
    """L_val(theta'(gamma)) as a differentiable function of gamma, from brute-force per-block gradients."""
    student = s.student
    names = dict((id(q), n) for n, q in student.named_parameters())
    theta = {n: q.detach().clone() for n, q in student.named_parameters()}
    bufs = {n: opt.state[q]["momentum_buffer"].clone() for n, q in student.named_parameters()}
    zero = torch.zeros(2, 2, dtype=torch.float64)
    g_s = {k: v for k, v in ((names.get(id(q)), g) for q, g in brute_force(s, b, zero + torch.tensor([[1.0, 0.0]] * 2, dtype=torch.float64)).items()) if k}
    g_t = {k: v for k, v in ((names.get(id(q)), g) for q, g in brute_force(s, b, zero + torch.tensor([[0.0, 1.0]] * 2, dtype=torch.float64)).items()) if k}
    units = list(student.units)
    block_of = {}
    for i, u in enumerate(units[:-1]):
        for n, q in student.named_parameters():
            if any(q is p for p in u.parameters()):
                block_of[n] = max(i - 1, 0)
    buffers = {n: x.clone() for n, x in student.named_buffers()}

    def val_loss(gamma):
        probs = torch.softmax(gamma, -1)
        new = {}
        for n in theta:
            blk = block_of.get(n)
            if blk is None:  # last block: no gamma
                g = g_s[n]  # alpha*gS + gKD already (the brute force puts no gamma on the last block)
            else:  # g_s holds g1=1 (alpha*gS), g_t holds g2=1 (gKD)
                g = probs[blk, 0] * g_s[n] + probs[blk, 1] * g_t[n]
            new[n] = _sgd_unrolled(theta[n], g, bufs[n], 0.1, 0.9, 5e-4)
        logits = functional_call(student, {**new, **buffers}, (vb.x,))
        return F.cross_entropy(logits, vb.y), new

    return val_loss


def test_exact_hypergradient_matches_autograd_through_unrolled_step():
    s, opt, vb = _setup_meta("exact")
    b = batch()
    gamma0 = s.gamma.detach().clone().requires_grad_(True)
    val_loss = _unrolled_val_loss_fn(s, opt, b, vb)
    loss, _ = val_loss(gamma0)
    expected = torch.autograd.grad(loss, gamma0)[0]
    s.search_step(b, dctx(b), opt)
    got = s.last_hypergradient
    assert got.dtype == torch.float64 and expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-14)
    assert not torch.equal(s.gamma.detach(), gamma0.detach())  # the meta optimiser moved gamma


def test_darts_option_matches_its_finite_difference_definition():
    s, opt, vb = _setup_meta("darts")
    b = batch()
    gamma0 = s.gamma.detach().clone()
    val_loss = _unrolled_val_loss_fn(s, opt, b, vb)
    theta = {n: q.detach().clone() for n, q in s.student.named_parameters()}
    leaves = {n: v.detach().requires_grad_(True) for n, v in val_loss(gamma0)[1].items()}
    buffers = {n: x.clone() for n, x in s.student.named_buffers()}
    lv = F.cross_entropy(functional_call(s.student, {**leaves, **buffers}, (vb.x,)), vb.y)
    v = dict(zip(leaves, torch.autograd.grad(lv, list(leaves.values()))))
    # directional derivatives of alpha*CE_b (heads) and L_KD at theta along v (all student parameters)
    with torch.no_grad():
        t = s.teacher.forward_features(b.x)

    def losses(eps):
        saved = [q.detach().clone() for q in s.student.parameters()]
        with torch.no_grad():
            for n, q in s.student.named_parameters():
                q.copy_(theta[n] + eps * v[n])
            p = abl_forward(s.student, b.x, s.heads)
            out = ([ALPHA * x for x in local_losses(p, b.y)], sum(s.distiller(p.features, t, dctx(b)).values()))
            for q, x in zip(s.student.parameters(), saved):
                q.copy_(x)
        return out

    eps = 0.01 / torch.sqrt(sum((x ** 2).sum() for x in v.values()))  # the paper's xi = 0.01 / ||v||
    (lp, kp), (lm, km) = losses(eps), losses(-eps)
    d1 = torch.stack([(a - c) / (2 * eps) for a, c in zip(lp, lm)])
    d2 = ((kp - km) / (2 * eps)).expand(2)
    d_probs = -0.1 * 1.9 * torch.stack([d1, d2], -1)  # eta * (1 + mu) for Nesterov SGD
    probs = torch.softmax(gamma0, -1)
    expected = probs * (d_probs - (probs * d_probs).sum(-1, keepdim=True))
    s.search_step(b, dctx(b), opt)
    torch.testing.assert_close(s.last_hypergradient, expected, rtol=1e-7, atol=1e-12)


def _searching(options):
    """A KD strategy ready for search steps: a fixed validation batch and an SGD optimiser over its modules."""
    s = make({"kd": {}}, options=options)
    vb = batch(8, seed=11)
    s._val_batch = lambda step, size: vb
    params = [q for m in s.trainable_modules() for q in m.parameters()]
    return s, torch.optim.SGD(params, lr=0.1, momentum=0.9)


def test_meta_every_k_moves_gamma_only_on_every_kth_step_after_the_warm_start():
    """meta_every = 3, warm start 2: meta steps at steps 2, 5, 8; every other step trains with gamma as it is
    (and equals train_step with those probabilities)."""
    s, opt = _searching({"warm_start_steps": 2, "meta_every": 3})
    moved = []
    for step in range(9):
        b = batch(seed=20 + step)
        before = s.gamma.detach().clone()
        s.search_step(b, DistillContext(labels=b.y, indices=b.index, epoch=0, step=step, epochs_total=1,
                                        progress=0.0), opt)
        moved.append(not torch.equal(before, s.gamma.detach()))
    assert moved == [False, False, True, False, False, True, False, False, True]
    with pytest.raises(Exception, match="meta_every"):
        make({"kd": {}}, options={"meta_every": 0})
    assert make({"kd": {}}).meta_every == 4  # the default chosen on the validation split (studies/abl-depth)


def _one_meta_step(options):
    s, opt = _searching({"warm_start_steps": 0, "meta_weight_decay": 0.0, **options})
    b = batch(seed=20)
    before = s.gamma.detach().clone()
    s.search_step(b, dctx(b), opt)
    return s, s.gamma.detach() - before


def test_meta_optimizer_sgd_steps_by_lr_times_hypergradient_and_adam_by_lr_whatever_its_scale():
    """SGD on gamma: delta = -meta_lr * dL_val/dgamma (the hypergradient's scale kept). Adam's first step is
    -meta_lr * sign(g) (m / sqrt(v) = g / |g| after bias correction), so its size does not follow the signal."""
    s, delta = _one_meta_step({"meta_optimizer": "SGD", "meta_lr": 0.5})
    assert isinstance(s.meta_opt, torch.optim.SGD)
    g = s.last_hypergradient
    assert g.abs().max() > 0
    torch.testing.assert_close(delta, -0.5 * g, rtol=1e-6, atol=1e-12)
    s, delta = _one_meta_step({"meta_lr": 0.5})
    g = s.last_hypergradient
    moved = g.abs() > 1e-5  # Adam's eps (1e-8) is negligible beside these
    assert moved.any()
    torch.testing.assert_close(delta[moved], -0.5 * torch.sign(g[moved]), rtol=1e-4, atol=1e-6)
    metrics = s.epoch_metrics()
    expected = g[:, 1].abs().tolist()
    assert metrics["abl_hypergradient_abs"] == pytest.approx(expected, rel=1e-3)
    with pytest.raises(Exception, match="meta_optimizer"):
        make({"kd": {}}, options={"meta_optimizer": "rmsprop"})


def test_aux_head_variants_and_errors():
    x = torch.randn(2, 8, 8, 8)
    sizes = {}
    for v in ("aux1", "aux2", "aux3", "aux4"):
        head = AuxHead(v, 8, 10)
        assert head(x).shape == (2, 10)
        sizes[v] = sum(q.numel() for q in head.parameters())
    assert sizes["aux1"] < sizes["aux3"] < sizes["aux4"]
    assert AuxHead("aux3", 8, 10, spatial=False)(torch.randn(2, 8)).shape == (2, 10)
    with pytest.raises(ConfigError, match="aux5"):
        make({"dkd": {}}, options={"aux": "aux5"})
    with pytest.raises(ConfigError, match="data.val_fraction"):
        make({"dkd": {}}, val=False)
    make({"dkd": {}}, val=False, options={"ablation": "fixed"})  # no search: no validation split needed
    with pytest.raises(ConfigError, match="2 entries"):
        make({"dkd": {}}, options={"gammas": [0.5]})
    with pytest.raises(ConfigError, match="gama: unknown option. Did you mean 'gammas'"):
        make({"dkd": {}}, options={"gama": 1})
    with pytest.raises(ConfigError, match="hypergradient"):
        make({"dkd": {}}, options={"hypergradient": "second_order"})
    assert make({"dkd": {}}, options={"hypergradient": "DARTS"}).hypergradient == "darts"  # case-insensitive


def test_phases_ablations_and_retrain_from_scratch():
    s = make({"dkd": {}}, options={"search_epochs": 2})
    assert [p.name for p in s.phases()] == ["search", "train"]
    init = {k: v.clone() for k, v in s.student.state_dict().items()}
    head_init = {k: v.clone() for k, v in s.heads.state_dict().items()}
    with torch.no_grad():
        for q in list(s.student.parameters()) + list(s.heads.parameters()):
            q.add_(1.0)
        s.gamma.copy_(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
    train_phase = s.phases()[-1]
    train_phase.on_start()
    assert all(torch.equal(init[k], v) for k, v in s.student.state_dict().items())
    assert all(torch.equal(head_init[k], v) for k, v in s.heads.state_dict().items())
    torch.testing.assert_close(s.probs(), torch.softmax(torch.tensor([[0.0, 1.0], [2.0, 0.0]]), -1).double())
    for ablation, first in (("fixed", [0.5, 0.5]), ("no_distill", [1.0, 0.0]), ("teacher_only", [0.0, 1.0])):
        f = make({"dkd": {}}, options={"ablation": ablation})
        assert [p.name for p in f.phases()] == ["train"] and f.probs()[0].tolist() == first
    r1, r2 = make({"dkd": {}}, options={"ablation": "random"}), make({"dkd": {}}, options={"ablation": "random"})
    assert torch.equal(r1.probs(), r2.probs()) and not torch.allclose(r1.probs()[:, 1], torch.full((2,), 0.5, dtype=torch.float64))
    given = make({"dkd": {}}, options={"gammas": [0.25, [3.0, 1.0]]})
    assert given.probs().tolist() == [[0.75, 0.25], [0.75, 0.25]] and [p.name for p in given.phases()] == ["train"]


def test_retrain_false_runs_the_search_as_the_training_phase_without_a_reload():
    """One stage (a cost option): a single "train" phase whose steps are search steps (gamma moves on its meta
    steps); the student keeps what it learnt (nothing reloaded); the gammas it ends with are the ones recorded."""
    s, opt = _searching({"retrain": False, "warm_start_steps": 1, "meta_every": 1})
    phases = s.phases()
    assert [p.name for p in phases] == ["train"] and phases[0].step == s.search_step
    assert phases[0].epochs == s.ctx.epochs and phases[0].on_start is not None
    phases[0].on_start()
    init = [q.detach().clone() for q in s.student.parameters()]
    gammas = []
    for step in range(3):
        b = batch(seed=30 + step)
        phases[0].step(b, DistillContext(labels=b.y, indices=b.index, epoch=0, step=step, epochs_total=1,
                                         progress=0.0), opt)
        gammas.append(s.gamma.detach().clone())
    assert torch.equal(gammas[0], torch.zeros_like(gammas[0]))  # warm start
    assert not torch.equal(gammas[1], gammas[0]) and not torch.equal(gammas[2], gammas[1])
    assert any(not torch.equal(a, q) for a, q in zip(init, s.student.parameters()))
    record = s.end_of_training()
    torch.testing.assert_close(torch.tensor(record["abl_gammas"], dtype=torch.float64),
                               torch.softmax(gammas[-1], -1))
    assert record["abl_gamma_source"] == "search"
    assert [p.name for p in make({"kd": {}}, options={"search_epochs": 2}).phases()] == ["search", "train"]
    with pytest.raises(ConfigError, match="drop strategy.options.search_epochs"):
        make({"kd": {}}, options={"retrain": False, "search_epochs": 2})


@pytest.mark.parametrize("name", ["kd", "dkd", "aekt", "fitnet", "at", "sp", "cc", "rkd", "vid", "pkt", "crd",
                                  "reviewkd"])
def test_wraps_the_distiller_zoo(name):
    """One search step (meta update included) and one retrain step per distiller: finite, every block learns."""
    s = make({name: {}}, dtype=torch.float32, options={"warm_start_steps": 0})
    s._val_batch = lambda step, size: batch(8, torch.float32, seed=4)
    b = batch(8, torch.float32)
    params = [q for m in s.trainable_modules() for q in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    before = s.gamma.detach().clone()
    out = s.search_step(b, dctx(b), opt)
    assert torch.isfinite(out["loss"])
    assert not torch.equal(before, s.gamma.detach())
    out = s.train_step(b, dctx(b), opt)
    assert torch.isfinite(out["loss"])
    for blk in s.blocks:
        assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in blk)


TINY = {"name": "resnet8", "kwargs": {"widths": [8, 8, 16]}}


def tiny_config(tmp_path: Path, root: Path, teacher_recipe: Path, **updates) -> dict:
    cfg = {
        "name": "abl", "seed": 0, "device": "cpu", "output_dir": str(tmp_path / "runs"), "progress": False,
        "data": {"name": "fashion_mnist", "root": str(root), "batch_size": 16, "eval_batch_size": 200,
                 "train_subset": 64, "test_subset": 200, "val_fraction": 0.01},
        "student": TINY,
        "teacher": {"name": "resnet8", "kwargs": {"widths": [8, 16, 16]}, "checkpoint": str(teacher_recipe)},
        "losses": {"kd": {"temperature": 4.0}}, "ce_weight": 0.1,
        "strategy": {"name": "abl", "options": {"search_epochs": 1, "warm_start_steps": 1, "trace_every": 1}},
        "train": {"epochs": 1, "precision": "fp32", "channels_last": False, "optimizer": {"lr": 0.05},
                  "schedule": {"name": "cosine"}},
    }
    return apply_dotted(cfg, updates)


@pytest.fixture(scope="module")
def teacher_recipe(tmp_path_factory):
    """A (random) teacher checkpoint: the mechanics under test do not need a trained one."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("abl-teacher") / "teacher.pt"
    teacher = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, widths=[8, 16, 16])
    torch.save(teacher.state_dict(), path)
    return path


def test_two_stage_run_records_and_resume_after_kill(tmp_path, fmnist_root, teacher_recipe, monkeypatch):
    every = {"train.checkpoint_every_steps": 2}
    straight = train(validate(tiny_config(tmp_path / "a", fmnist_root, teacher_recipe, **every)), log=lambda m: None)
    d = Path(straight["run_dir"])
    metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in metrics] == ["search", "train"]
    assert all(len(m["abl_gamma_teacher"]) == 2 for m in metrics) and "aux_ce" in metrics[0]
    assert "abl_val_loss" in metrics[0]
    trace = [json.loads(x) for x in (d / "abl_gamma.jsonl").read_text().splitlines()]
    assert trace[0]["iteration"] == 0 and trace[0]["gamma_teacher"] == [0.5, 0.5]
    assert [r["iteration"] for r in trace] == list(range(len(trace)))  # 0 .. all search steps
    assert trace[-1]["gamma_teacher"] != [0.5, 0.5]
    saved = json.loads((d / "abl_gammas.json").read_text())
    assert saved["gamma_teacher"] == trace[-1]["gamma_teacher"] and len(saved["head_top1"]) == 3
    assert straight["abl_gammas"] == saved["gammas"] and len(straight["abl_head_top1"]) == 3
    assert metrics[-1]["abl_gamma_teacher"] == pytest.approx(saved["gamma_teacher"], abs=1e-6)
    plain = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, widths=[8, 8, 16]).state_dict()
    exported = load_checkpoint(d / "checkpoints" / "student.pt")["model"]
    assert set(exported) == set(plain)  # no auxiliary heads in the exported student
    # the per-block logits of the analysis (Strategy.block_logits): the heads of last.pt give the recorded accuracies
    from adakd.config import load_config
    from adakd.tools.report.analysis_plots import evaluation_loader

    run_cfg = load_config(d / "config.yaml")
    student = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, widths=[8, 8, 16])
    student.load_state_dict(exported)
    student.eval()
    heads = ABLStrategy.block_logits(load_checkpoint(d / "checkpoints" / "last.pt")["strategy"],
                                     run_cfg.strategy.options, student, 10)
    test, _ = evaluation_loader(run_cfg.data, torch.device("cpu"))
    correct, seen = [0] * 3, 0  # blocks 1-2: their heads; block 3: the student's classifier
    with torch.no_grad():
        for batch in test:
            for k, z in enumerate([*heads(batch.x), student(batch.x)]):
                correct[k] += int((z.argmax(1) == batch.y).sum())
            seen += len(batch.y)
    assert [100.0 * c / seen for c in correct] == pytest.approx(saved["head_top1"], abs=1e-3)
    try:
        from adakd.tools.report.plots import plot_run

        names = {p.name for p in plot_run(d)}
        assert {"abl_gammas.png", "abl_block_accuracy.png"} <= names
    except ImportError:
        pass
    # killed in the middle of the search (after 3 of its 4 steps; last checkpoint at step 2), resumed,
    # killed again in the middle of the retrain, resumed: the same student, gammas and records
    cfg = validate(tiny_config(tmp_path / "k", fmnist_root, teacher_recipe, **every))
    for phase_name in ("search", "train"):
        restore = kill_after_steps(monkeypatch, 3, lambda phase, call, name=phase_name: phase.name == name)
        with pytest.raises(Killed):
            train(cfg.model_copy(update={"resume": phase_name == "train"}), log=lambda m: None)
        restore()
    resumed = train(cfg.model_copy(update={"resume": True}), log=lambda m: None)
    a = load_checkpoint(d / "checkpoints" / "student.pt")["model"]
    b = load_checkpoint(Path(resumed["run_dir"]) / "checkpoints" / "student.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["abl_gammas"] == straight["abl_gammas"]
    assert resumed["abl_head_top1"] == straight["abl_head_top1"]
    rd = Path(resumed["run_dir"])
    assert (rd / "abl_gamma.jsonl").read_text() == (d / "abl_gamma.jsonl").read_text()
    assert [json.loads(x)["phase"] for x in (rd / "metrics.jsonl").read_text().splitlines()] == ["search", "train"]
    # the per-epoch records of the strategy, the search's hypergradient included (a meta step at step 1 came
    # before the checkpoint at step 2 that the resume started from): exactly the uninterrupted run's
    records = [{k: v for k, v in m.items() if k.startswith("abl_")} for m in metrics]
    assert "abl_hypergradient_abs" in records[0] and min(records[0]["abl_hypergradient_abs"]) > 0
    assert [{k: v for k, v in json.loads(x).items() if k.startswith("abl_")}
            for x in (rd / "metrics.jsonl").read_text().splitlines()] == records


def test_one_stage_run_end_to_end(tmp_path, fmnist_root, teacher_recipe):
    """retrain=false through the trainer: one "train" phase of search steps; gamma leaves 0.5 and is recorded;
    the sweep-style null override of a pinned search_epochs is accepted."""
    cfg = tiny_config(tmp_path, fmnist_root, teacher_recipe,
                      **{"strategy.options": {"retrain": False, "search_epochs": None, "warm_start_steps": 1,
                                              "meta_every": 1, "trace_every": 1}, "train.epochs": 2})
    out = train(validate(cfg), log=lambda m: None)
    d = Path(out["run_dir"])
    metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in metrics] == ["train", "train"]
    trace = [json.loads(x) for x in (d / "abl_gamma.jsonl").read_text().splitlines()]
    assert trace[0]["gamma_teacher"] == [0.5, 0.5] and trace[-1]["gamma_teacher"] != [0.5, 0.5]
    saved = json.loads((d / "abl_gammas.json").read_text())
    assert saved["source"] == "search" and saved["gamma_teacher"] == trace[-1]["gamma_teacher"]
