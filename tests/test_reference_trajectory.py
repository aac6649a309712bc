"""Our CIFAR-100 training step is the reference code's step (issue 25, item 3): golden trajectories.

The fixtures (tests/fixtures/trajectory/<method>_<pair>.npz) were written by
``scripts/make_trajectory_fixtures.py`` running mdistiller (the DKD authors' code) on the CPU: its distiller
built from its CIFAR-100 config, every weight (teacher, student, connectors, CRD's memory banks) set by
``trajectory_fill.fill(reference key, shape)``, then 10 fixed batches of 16 through its trainer's own
optimiser, lr and step, at epoch 1. Here the same run goes through ours: ``configs/cifar100/<method>/<pair>.yaml``
resolved, the models loaded from the reference-layout state dict (``models/foreign.py``), the connectors
filled under their reference names, the strategy / optimiser / schedule built as the trainer builds them
(``engine/components.py``, ``engine/optim.py``), fp32.

The criterion (a random-weight pair at lr 0.05 is chaotic, so equality cannot hold for long): with
drift_k = ||theta_k(ours) - theta_k(ref)|| / ||theta_k(ref) - theta_0|| on the fixture's sample of the trained
parameters, drift_1 < 1e-4 (the same computation up to fp32 rounding; so are the loss terms, the distance
travelled and the probe logits: ``test_first_step_matches_reference``), and at every step drift_k is below the
reference's own drift from weights nudged by U(-1e-7, 1e-7) (the fixture's chaos curve:
``test_trajectory_within_reference_chaos``). The second is sensitive: with our NCE's eps added in another
float32 order than the CRD code's (a rounding-level difference), CRD on res32x4 -> res8x4 drifted 3.4e-4 at
step 2 against the nudged reference's 9.0e-5 (losses/crd.py now adds it as the CRD code does).

Documented differences, each set here to the reference's behaviour:
* DKD, ReviewKD: our warm-up advances every step (0 at the first step); mdistiller's once per epoch, counted
  from 1 (1/20 all through epoch 1): ``warmup_advance: epoch`` (REFERENCE_OPTIONS).
* CRD: the negatives are random on both sides (ours: uniform over the other samples, drawn by the loss;
  mdistiller's "exact" mode: other classes, drawn by its dataset); the fixture fixes them: the reference got
  them as its trainer's ``contrastive_index``, ours from a replaced ``CRD.sample_negatives`` (no config key).
* WRN feature points: our stage outputs are ReLU(BN(block sum)), the reference's the raw block sums (its
  pre-activation features agree): ``student/teacher.kwargs.stage_features: block_sum`` for the methods that
  read stage maps (FitNet, AT, ReviewKD; models/wrn.py).
* FitNet: the reference's regressor conv has a bias, ours none; the train-mode BatchNorm right after it
  cancels it (zero gradient, it only decays), so it is left out of the compared parameters (EXCLUDED).

A reference quirk, emulated here rather than offered as an option: mdistiller's WRN computes its
``preact_feats`` by applying the BatchNorm that ends each stage a second time, which in train mode updates
that BN's running statistics twice per step (the student's only: the teacher is in eval mode). The weights
and train-mode outputs do not depend on it, the eval-mode logits do; :func:`double_stage_bn_updates` does
the same to our student so that the eval-mode probe logits are compared too.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import trajectory_fill as rf
from adakd.config import load_config
from adakd.errors import ConfigError
from adakd.data import Batch
from adakd.engine.components import build_components, build_phase_optimizer, build_student, spec_of
from adakd.engine.optim import StepSchedule
from adakd.losses.base import DistillContext
from adakd.losses.dkd import DKD
from adakd.losses.reviewkd import ReviewKD
from adakd.models import build_model
from adakd.models.contract import Features, FeatureShapes
from adakd.models.foreign import layouts, load_foreign_state_dict

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "trajectory"
METHODS = ("kd", "dkd", "fitnet", "at", "crd", "reviewkd")
PAIRS = ("res32x4_res8x4", "wrn40_2_wrn16_2")

#: Config keys that give the reference's behaviour where ours differs by a documented choice.
REFERENCE_OPTIONS = {
    "dkd": ["losses.dkd.warmup_advance=epoch"],
    "reviewkd": ["losses.reviewkd.warmup_advance=epoch"],
}
#: The reference's WRN feature points (raw block sums, models/wrn.py) for the methods that read stage maps.
WRN_BLOCK_SUMS = ["student.kwargs.stage_features=block_sum", "teacher.kwargs.stage_features=block_sum"]
STAGE_MAP_METHODS = ("fitnet", "at", "reviewkd")


def reference_options(method: str, pair: str) -> list[str]:
    """The config overrides that give the reference's behaviour for ``method`` on ``pair``."""
    extra = WRN_BLOCK_SUMS if pair.startswith("wrn") and method in STAGE_MAP_METHODS else []
    return REFERENCE_OPTIONS.get(method, []) + extra
#: Reference parameters without a counterpart here (see the module docstring).
EXCLUDED = {"fitnet": {"conv_reg.conv.bias"}}
FIRST_STEP_TOLERANCE = 1e-4


def reviewkd_name(key: str) -> str:
    """Our ABF k (shallow to deep) is mdistiller's ``abfs[3 - k]`` (it stores them deepest first)."""
    _, k, rest = key.split(".", 2)
    return f"abfs.{3 - int(k)}.{rest}"


#: Our distiller's state-dict key -> the reference distiller's (None: a key with no counterpart, left as built).
CONNECTOR_NAMES = {
    "fitnet": lambda key: key.replace("regressor.", "conv_reg.", 1),
    "crd": lambda key: {"memory_s": "contrast.memory_v1", "memory_t": "contrast.memory_v2", "z_s": None,
                        "z_t": None, "_extra_state": None}.get(key, key),
    "reviewkd": reviewkd_name,
}


def load_fixture(method: str, pair: str) -> SimpleNamespace:
    with np.load(FIXTURES / f"{method}_{pair}.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return SimpleNamespace(meta=json.loads(str(arrays.pop("meta"))), **arrays)


def fill_reference_layout(model: torch.nn.Module, prefix: str) -> None:
    """Load ``model`` from the reference-layout state dict the fixture's fill defines (``prefix``: its place
    in the reference distiller, ``student.`` / ``teacher.``)."""
    own = model.state_dict()
    sd = {theirs: rf.fill(prefix + theirs, own[ours].shape, own[ours].dtype)
          for ours, theirs in layouts(model)["reference"].items()}
    assert load_foreign_state_dict(model, sd, format="reference") == "reference"


def reference_names(method: str, student: torch.nn.Module, distiller: torch.nn.Module | None) -> dict[int, str]:
    """id(parameter) -> its key in the reference distiller's state dict."""
    student_map = layouts(student)["reference"]
    names = {id(p): "student." + student_map[n] for n, p in student.named_parameters()}
    if distiller is not None:
        for n, p in distiller.named_parameters():
            names[id(p)] = CONNECTOR_NAMES[method](n)
    return names


def double_stage_bn_updates(model) -> None:
    """Apply each stage-end BatchNorm (the pre-activation features' BN) twice in train mode, as mdistiller's
    WRN does (the module docstring): a forward hook re-runs the BN's own forward (hooks bypassed)."""
    for bn in model.preact_bns():
        if bn is not None:
            bn.register_forward_hook(lambda m, args, out: type(m).forward(m, args[0]) if m.training else None)


def probe_logits(model: torch.nn.Module, x: torch.Tensor, train: bool) -> np.ndarray:
    """Logits in train mode (batch statistics; BN buffers restored after) or eval mode, as the fixture's."""
    saved = [b.clone() for b in model.buffers()]
    was = model.training
    model.train(train)
    with torch.no_grad():
        out = model(x).float().numpy()
        for b, s in zip(model.buffers(), saved):
            b.copy_(s)
    model.train(was)
    return out


def run_ours(method: str, pair: str, fx: SimpleNamespace) -> SimpleNamespace:
    """Our side of the fixture: the same initial weights, batches and epoch through our step."""
    meta = fx.meta
    batch = meta["batch_size"]
    cfg = load_config(REPO / "configs" / "cifar100" / method / f"{pair}.yaml",
                      [f"data.batch_size={batch}"] + reference_options(method, pair))
    info = SimpleNamespace(num_classes=100, in_channels=3, image_size=32)
    steps_per_epoch = math.ceil(rf.CIFAR100_TRAIN / batch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the builders' random init is overwritten below
        student = build_student(cfg.student, info)
        teacher = build_student(cfg.teacher, info).eval().requires_grad_(False)
        fill_reference_layout(student, "student.")
        fill_reference_layout(teacher, "teacher.")
        parts = build_components(spec_of(cfg), student, teacher, device=torch.device("cpu"), precision="fp32",
                                 num_classes=100, num_train=rf.CIFAR100_TRAIN, steps_per_epoch=steps_per_epoch)
    if pair.startswith("wrn"):
        double_stage_bn_updates(student)
    distiller = parts.distiller
    if distiller is not None:  # connectors (and CRD's memory banks) under their reference names
        with torch.no_grad():
            for key, value in distiller.state_dict().items():
                theirs = CONNECTOR_NAMES[method](key) if method in CONNECTOR_NAMES else key
                if theirs is not None and value.is_floating_point():
                    distiller.state_dict()[key].copy_(rf.fill(theirs, value.shape, value.dtype))
    phase = parts.phases[-1]
    optimizer = build_phase_optimizer(phase, cfg.train.optimizer, cfg.train.optimizer.lr, torch.device("cpu"))
    schedule = StepSchedule(optimizer, cfg.train.schedule, phase.epochs, steps_per_epoch)

    names = reference_names(method, student, distiller)
    trained = {names[id(p)]: p for g in optimizer.param_groups for p in g["params"]}
    ref_keys = [k for k, _ in meta["trained"] if k not in EXCLUDED.get(method, set())]
    assert sorted(trained) == sorted(ref_keys), "our optimiser trains other parameters than the reference's"
    ordered = [trained[k] for k in ref_keys]
    excluded = EXCLUDED.get(method, set())
    counts = [c for (k, _), c in zip(meta["trained"], meta["sample_counts"]) if k not in excluded]
    kept_columns = np.concatenate([np.full(c, k not in excluded) for (k, _), c in
                                   zip(meta["trained"], meta["sample_counts"])])
    offsets = np.cumsum([0] + [p.numel() for p in ordered[:-1]]).tolist()
    index = torch.cat([rf.sample_index(p.numel(), c) + o for p, c, o in zip(ordered, counts, offsets)])

    def flat() -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).double() for p in ordered])

    step_now = [0]
    if method == "crd":  # the fixture's negatives (see the module docstring)
        distiller.sample_negatives = lambda idx: rf.crd_negatives(step_now[0], idx.shape[0], distiller.num_negatives)
    theta0 = flat()
    probe = rf.probe_images(meta["probe"])
    epoch = meta["epoch"] - 1  # mdistiller counts epochs from 1, we from 0
    parts.strategy.on_epoch_start(epoch)
    phase.model.train()
    out = SimpleNamespace(terms=[], sample=[], travel=[], key_travel=[], probe_train=[], probe_eval=[],
                          start=theta0[index].float().numpy(), kept_columns=kept_columns, keys=ref_keys)
    for i in range(meta["steps"]):
        step_now[0] = i
        step = epoch * steps_per_epoch + i
        schedule.set_step(step)
        x, y, idx = rf.trajectory_batch(i, batch)
        ctx = DistillContext(labels=y, indices=idx, epoch=epoch, step=step, epochs_total=phase.epochs,
                             progress=step / steps_per_epoch)
        terms = phase.step(Batch(x, y, idx), ctx, optimizer)
        ce = float(terms["ce"])
        out.terms.append([ce, float(terms["loss"]) - ce])
        theta = flat()
        out.sample.append(theta[index].float().numpy())
        out.travel.append(float((theta - theta0).norm()))
        out.key_travel.append([float((theta - theta0)[o:o + q.numel()].norm()) for q, o in zip(ordered, offsets)])
        out.probe_train.append(probe_logits(student, probe, train=True))
        out.probe_eval.append(probe_logits(student, probe, train=False))
    out.lr = optimizer.param_groups[0]["lr"]
    return out


def drift(ours: np.ndarray, ref: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Per step: ||ours_k - ref_k|| / ||ref_k - start|| over the sampled coordinates (float64)."""
    ours, ref, start = (a.astype(np.float64) for a in (ours, ref, start))
    return np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref - start[None], axis=1)


def curve(values: np.ndarray) -> str:
    return " ".join(f"{v:.1e}" for v in values)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


CASES = [pytest.param(m, p, marks=[pytest.mark.slow, pytest.mark.extended] if p == "res32x4_res8x4" else [], id=f"{m}-{p}")
         for m in METHODS for p in PAIRS]


_RUNS: dict[tuple[str, str], tuple[SimpleNamespace, SimpleNamespace]] = {}


def fixture_and_run(method: str, pair: str) -> tuple[SimpleNamespace, SimpleNamespace]:
    """(fixture, our run) of a case, run once per test session (both tests below read it; the run keeps only
    what it recorded, not its models)."""
    if (method, pair) not in _RUNS:
        fx = load_fixture(method, pair)
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _RUNS[(method, pair)] = fx, run_ours(method, pair, fx)
        finally:
            torch.set_num_threads(before)
    return _RUNS[(method, pair)]


def our_drift(fx: SimpleNamespace, ours: SimpleNamespace) -> np.ndarray:
    return drift(np.stack(ours.sample), fx.sample[:, ours.kept_columns], ours.start)


@pytest.mark.parametrize("method,pair", CASES)
def test_first_step_matches_reference(method, pair):
    """After one step: parameters, loss terms, distance travelled and probe logits within 1e-4 (relative)."""
    fx, ours = fixture_and_run(method, pair)
    assert fx.meta["epoch"] == 1 and fx.meta["lr"] == pytest.approx(0.05)
    assert ours.lr == pytest.approx(fx.meta["lr"], rel=1e-12)  # the same lr at these steps (no lr warm-up)
    d = our_drift(fx, ours)
    assert d[0] < FIRST_STEP_TOLERANCE, f"drift after step 1: {d[0]:.2e}"
    assert rel(ours.terms[0], fx.terms[0]) < FIRST_STEP_TOLERANCE, (ours.terms[0], fx.terms[0].tolist())
    assert abs(ours.travel[0] - fx.travel[0]) / fx.travel[0] < FIRST_STEP_TOLERANCE
    assert rel(ours.probe_train[0], fx.probe_train[0]) < FIRST_STEP_TOLERANCE
    assert rel(ours.probe_eval[0], fx.probe_eval[0]) < FIRST_STEP_TOLERANCE


@pytest.mark.parametrize("method,pair", CASES)
def test_trajectory_within_reference_chaos(method, pair):
    """At every step, ours is closer to the reference than the reference is to itself from weights nudged by
    U(-1e-7, 1e-7) (both measured on the fixture's parameter sample)."""
    fx, ours = fixture_and_run(method, pair)
    d = our_drift(fx, ours)
    print(f"{method} {pair}: drift {curve(d)}; reference nudged by 1e-7: {curve(fx.chaos_sample)}")
    assert np.all(d < fx.chaos_sample), f"ours {curve(d)} vs the nudged reference {curve(fx.chaos_sample)}"


# ------------------------------------------------------------------ the options that give the reference's behaviour
def _logit_features(seed: int, batch: int = 6, classes: int = 10):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, classes, generator=gen) * 3
    return Features(logits=z, stages=[], preact_stages=[], pooled=z)


@pytest.mark.parametrize("progress,epoch", [(0.0, 0), (0.5, 0), (3.25, 3)])
def test_dkd_warmup_advance(progress, epoch):
    """``warmup_advance: epoch`` scales by min((epoch + 1) / warmup, 1) (mdistiller: 1/20 all through epoch 1);
    ``step`` (ours) by min(progress / warmup, 1); the unscaled terms are the same."""
    s, t = _logit_features(0), _logit_features(1)
    shapes = FeatureShapes.of(s)
    y = torch.tensor([0, 3, 9, 2, 2, 7])
    ctx = DistillContext(labels=y, epoch=epoch, progress=progress)
    full = DKD(shapes, shapes, warmup_epochs=0)(s, t, ctx)
    per_epoch = DKD(shapes, shapes, warmup_epochs=20, warmup_advance="epoch")(s, t, ctx)
    per_step = DKD(shapes, shapes, warmup_epochs=20)(s, t, ctx)
    for name in ("tckd", "nckd"):
        assert float(per_epoch[name]) == pytest.approx(float(full[name]) * (epoch + 1) / 20, rel=1e-6)
        assert float(per_step[name]) == pytest.approx(float(full[name]) * progress / 20, rel=1e-6, abs=1e-12)
    with pytest.raises(ConfigError, match="warmup_advance"):
        DKD(shapes, shapes, warmup_advance="batch")


def test_reviewkd_warmup_advance():
    shapes = FeatureShapes(stages=[(4, 8, 8), (8, 4, 4)], pooled=8, num_classes=10)
    first_epoch = DistillContext(labels=torch.zeros(2, dtype=torch.long), epoch=0, progress=0.0)
    assert ReviewKD(shapes, shapes, warmup_advance="epoch").warmup_factor(first_epoch) == pytest.approx(1 / 20)
    assert ReviewKD(shapes, shapes).warmup_factor(first_epoch) == 0.0
    later = DistillContext(labels=torch.zeros(2, dtype=torch.long), epoch=30, progress=30.5)
    assert ReviewKD(shapes, shapes, warmup_advance="epoch").warmup_factor(later) == 1.0


def test_wrn_block_sum_features():
    """``stage_features: block_sum``: the stage outputs are the raw block sums that each stage-end BN reads
    (RepDistiller/mdistiller's WRN features); logits and pre-activation features are unchanged."""
    torch.manual_seed(0)
    ours = build_model("wrn_16_2", num_classes=10)
    ref = build_model("wrn_16_2", num_classes=10, stage_features="block_sum")
    ref.load_state_dict(ours.state_dict())
    ours.eval(), ref.eval()
    seen = []
    hooks = [bn.register_forward_hook(lambda m, args, out: seen.append(args[0])) for bn in ref.preact_bns() if bn]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = ours.forward_features(x), ref.forward_features(x)
    for h in hooks:
        h.remove()
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pooled, b.pooled)
    assert all(torch.equal(p, q) for p, q in zip(a.preact_stages, b.preact_stages))
    assert torch.equal(a.stages[0], b.stages[0])
    assert len(seen) == 3 and all(torch.equal(s, f) for s, f in zip(seen, b.stages[1:]))
    assert all(torch.equal(torch.relu(p), s) for p, s in zip(b.preact_stages[1:], a.stages[1:]))
    assert not torch.equal(a.stages[1], b.stages[1])
    with pytest.raises(ConfigError, match="stage_features"):
        build_model("wrn_16_2", stage_features="sum")
