#!/usr/bin/env python
"""Write the training-step golden fixtures of tests/test_reference_trajectory.py by running the reference
code base (mdistiller, the DKD authors' code: megvii-research/mdistiller) on fixed inputs.

    git -C <mirror of megvii-research/mdistiller> archive HEAD | tar -x -C /tmp/ref/mdistiller
    python -m venv --system-site-packages /tmp/refvenv && /tmp/refvenv/bin/pip install yacs tensorboardX
    /tmp/refvenv/bin/python scripts/make_trajectory_fixtures.py --reference /tmp/ref/mdistiller

For each method (KD, DKD, FitNet, AT, CRD, ReviewKD) x pair (resnet32x4 -> resnet8x4, wrn_40_2 -> wrn_16_2):
  * the reference's distiller is built from its CIFAR-100 config (cfg.py defaults + the method's yaml;
    the WRN pair with the command-line options a user gives mdistiller for another pair, see PAIR_OPTIONS);
  * every state-dict entry of the distiller (teacher, student, connectors, CRD's memory banks) is set to
    ``trajectory_fill.fill(key, shape)``: a function of the reference key and shape only (tests/trajectory_fill.py);
  * the reference trainer's own optimiser (``BaseTrainer.init_optimizer``), lr (``adjust_learning_rate``
    at the fixture's epoch) and step (``train_iter``) run STEPS fixed batches (``trajectory_fill.trajectory_batch``)
    in fp32 on the CPU (``.cuda()`` is made a no-op when no GPU is there: the reference run on the CPU);
  * recorded after every step: the loss terms, the student's logits on a fixed probe batch (in train mode,
    BN buffers restored after, and in eval mode), a fixed sample of the trained parameters (student +
    connectors; ``trajectory_fill.sample_counts``) and the exact L2 distance travelled, per trained tensor;
  * the same run from trained parameters nudged by U(-1e-7, 1e-7) (``trajectory_fill.nudge``): its drift
    ||theta'_k - theta_k|| / ||theta_k - theta_0|| at every step, exact and on the sample (the chaos curve).

CRD's negatives are the fixture's (``trajectory_fill.crd_negatives``), passed as the CRD trainer's
``contrastive_index`` (column 0 = the positive, as its dataset builds it); its memory banks are filled.
Output: tests/fixtures/trajectory/<method>_<pair>.npz (arrays + ``meta``, a JSON string).
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

import trajectory_fill as rf  # noqa: E402
from adakd.engine.checkpoint import atomic_write_bytes  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "trajectory"
STEPS = 10
BATCH = 16
PROBE = 4
SAMPLE = 1536  # trained-parameter coordinates recorded per step
NUDGE = 1e-7
#: mdistiller counts epochs from 1; the fixture's steps are the first steps of this epoch.
EPOCH = 1

#: our config directory -> mdistiller's config file ({pair}: mdistiller's DKD file name of the pair).
METHODS = {
    "kd": "kd.yaml",
    "dkd": "dkd/{pair}.yaml",
    "fitnet": "fitnet.yaml",
    "at": "at.yaml",
    "crd": "crd.yaml",
    "reviewkd": "reviewkd.yaml",
}
#: our pair name -> (teacher, student, mdistiller's DKD config name of the pair).
PAIRS = {
    "res32x4_res8x4": ("resnet32x4", "resnet8x4", "res32x4_res8x4"),
    "wrn40_2_wrn16_2": ("wrn_40_2", "wrn_16_2", "wrn40_2_wrn_16_2"),
}


def pair_options(method: str, teacher: nn.Module, student: nn.Module, t_name: str, s_name: str) -> list:
    """The command-line options (``opts``) mdistiller needs for this pair: the models, and for CRD / ReviewKD
    the feature dimensions its config holds for resnet32x4 -> resnet8x4 (read off the models' features)."""
    opts = ["DISTILLER.TEACHER", t_name, "DISTILLER.STUDENT", s_name]
    with torch.no_grad():
        x = torch.zeros(2, 3, 32, 32)
        _, fs = student.eval()(x)
        _, ft = teacher.eval()(x)
    if method == "crd":
        opts += ["CRD.FEAT.STUDENT_DIM", fs["pooled_feat"].shape[1], "CRD.FEAT.TEACHER_DIM", ft["pooled_feat"].shape[1]]
    if method == "reviewkd":
        s_maps = fs["feats"][1:]
        t_maps = ft["preact_feats"][1:]
        opts += ["REVIEWKD.IN_CHANNELS", [f.shape[1] for f in s_maps] + [fs["pooled_feat"].shape[1]],
                 "REVIEWKD.OUT_CHANNELS", [f.shape[1] for f in t_maps] + [ft["pooled_feat"].shape[1]],
                 "REVIEWKD.SHAPES", [1] + [f.shape[2] for f in reversed(s_maps)],
                 "REVIEWKD.OUT_SHAPES", [1] + [f.shape[2] for f in reversed(t_maps)]]
    return opts


def cpu_only() -> None:
    """Run the reference on the CPU: its ``.cuda()`` calls (trainer inputs, CRD's sampler) become no-ops."""
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]


def reference_distiller(ref, method: str, pair: str):
    """(cfg, distiller) of the reference, every state-dict entry filled by ``trajectory_fill.fill``."""
    t_name, s_name, dkd_pair = PAIRS[pair]
    models = ref["cifar_model_dict"]
    teacher = models[t_name][0](num_classes=100)
    student = models[s_name][0](num_classes=100)
    cfg = ref["CFG"].clone()
    cfg.merge_from_file(str(ref["root"] / "configs" / "cifar100" / METHODS[method].format(pair=dkd_pair)))
    opts = pair_options(method, teacher, student, t_name, s_name)
    cfg.merge_from_list([str(v) if not isinstance(v, list) else str(v) for v in opts])
    cfg.freeze()
    kind = ref["distiller_dict"][cfg.DISTILLER.TYPE]
    distiller = kind(student, teacher, cfg, rf.CIFAR100_TRAIN) if cfg.DISTILLER.TYPE == "CRD" else kind(student, teacher, cfg)
    state = distiller.state_dict()
    filled = {k: (v if k == "contrast.params" else rf.fill(k, v.shape, v.dtype)) for k, v in state.items()}
    distiller.load_state_dict(filled)
    return cfg, distiller, [str(o) for o in opts]


def trained_named(trainer, distiller: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters the reference's optimiser updates, with their distiller state-dict names, in its order."""
    names = {id(p): n for n, p in distiller.named_parameters()}
    return [(names[id(p)], p) for g in trainer.optimizer.param_groups for p in g["params"]]


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for _, p in params])


def run(ref, method: str, pair: str, nudged: bool) -> dict:
    """One reference run of STEPS steps; returns what it recorded."""
    cfg, distiller, opts = reference_distiller(ref, method, pair)
    trainer_cls = ref["trainer_dict"][cfg.SOLVER.TRAINER]
    trainer = trainer_cls.__new__(trainer_cls)  # the trainer's own optimiser and step, without its log files
    trainer.cfg = cfg
    trainer.distiller = nn.DataParallel(distiller)  # as tools/train.py wraps it (a pass-through on the CPU)
    trainer.optimizer = trainer.init_optimizer(cfg)
    lr = ref["adjust_learning_rate"](EPOCH, cfg, trainer.optimizer)
    params = trained_named(trainer, distiller)
    if nudged:
        with torch.no_grad():
            for name, p in params:
                p.add_(rf.nudge(name, p.shape, NUDGE))
    theta0 = flat(params)
    counts = rf.sample_counts([p.numel() for _, p in params], SAMPLE)
    index = torch.cat([rf.sample_index(p.numel(), c) + off for (_, p), c, off in
                       zip(params, counts, np.cumsum([0] + [p.numel() for _, p in params[:-1]]).tolist())])
    captured = {}
    distiller.register_forward_hook(lambda m, a, out: captured.update(terms=out[1]))
    probe = rf.probe_images(PROBE)
    meters = {k: ref["AverageMeter"]() for k in ("training_time", "data_time", "losses", "top1", "top5")}
    rec = {"terms": [], "probe_train": [], "probe_eval": [], "sample": [], "travel": [], "key_travel": [], "theta": []}
    k_neg = int(cfg.CRD.NCE.K)
    trainer.distiller.train()
    for step in range(STEPS):
        x, y, idx = rf.trajectory_batch(step, BATCH)
        data = (x, y, idx)
        if cfg.SOLVER.TRAINER == "crd":
            data = data + (torch.cat([idx[:, None], rf.crd_negatives(step, BATCH, k_neg)], dim=1),)
        trainer.train_iter(data, EPOCH, meters)
        rec["terms"].append([float(v.detach().mean()) for v in captured["terms"].values()])
        rec["term_names"] = list(captured["terms"])
        rec["probe_train"].append(probe_logits(distiller.student, probe, train=True))
        rec["probe_eval"].append(probe_logits(distiller.student, probe, train=False))
        theta = flat(params)
        rec["theta"].append(theta)
        rec["sample"].append(theta[index].float().numpy())
        rec["travel"].append(float((theta - theta0).norm()))
        rec["key_travel"].append([float((p.detach().double().reshape(-1) - theta0[o:o + p.numel()]).norm())
                                  for (_, p), o in zip(params, np.cumsum([0] + [p.numel() for _, p in params[:-1]]).tolist())])
    rec.update(cfg=cfg, opts=opts, lr=lr, params=[(n, list(p.shape)) for n, p in params], counts=counts,
               index=index, theta0=theta0)
    return rec


def probe_logits(student: nn.Module, x: torch.Tensor, train: bool) -> np.ndarray:
    """The student's logits on ``x``: in train mode (batch statistics; BN buffers restored after) or eval mode."""
    buffers = copy.deepcopy(list(student.buffers()))
    was = student.training
    student.train(train)
    with torch.no_grad():
        out = student(x)[0].float().numpy()
    with torch.no_grad():
        for b, saved in zip(student.buffers(), buffers):
            b.copy_(saved)
    student.train(was)
    return out


def load_reference(root: Path) -> dict:
    sys.path.insert(0, str(root))
    cpu_only()
    from mdistiller.distillers import distiller_dict
    from mdistiller.engine import trainer_dict
    from mdistiller.engine.cfg import CFG
    from mdistiller.engine.utils import AverageMeter, adjust_learning_rate
    from mdistiller.models import cifar_model_dict

    return dict(root=root, distiller_dict=distiller_dict, trainer_dict=trainer_dict, CFG=CFG,
                AverageMeter=AverageMeter, adjust_learning_rate=adjust_learning_rate,
                cifar_model_dict=cifar_model_dict)


def reference_commit(root: Path, given: str | None) -> str:
    if given:
        return given
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (pass --commit)"


def make(ref, method: str, pair: str, commit: str, out: Path = OUT) -> Path:
    t0 = time.perf_counter()
    base = run(ref, method, pair, nudged=False)
    nudge = run(ref, method, pair, nudged=True)
    travel = np.array(base["travel"])
    idx = base["index"]
    chaos = np.array([float((a - b).norm()) for a, b in zip(nudge["theta"], base["theta"])]) / travel
    chaos_sample = np.array([float((a[idx] - b[idx]).norm()) / float((b[idx] - base["theta0"][idx]).norm())
                             for a, b in zip(nudge["theta"], base["theta"])])
    cfg = base["cfg"]
    meta = {
        "method": method, "pair": pair, "reference": "megvii-research/mdistiller", "commit": commit,
        "config": f"configs/cifar100/{METHODS[method].format(pair=PAIRS[pair][2])}", "opts": base["opts"],
        "trainer": cfg.SOLVER.TRAINER, "epoch": EPOCH, "lr": base["lr"], "steps": STEPS, "batch_size": BATCH,
        "probe": PROBE, "nudge": NUDGE, "momentum": cfg.SOLVER.MOMENTUM, "weight_decay": cfg.SOLVER.WEIGHT_DECAY,
        "term_names": base["term_names"], "trained": base["params"], "sample_counts": base["counts"],
        "torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 1),
    }
    arrays = {
        "terms": np.array(base["terms"], dtype=np.float64),
        "probe_train": np.stack(base["probe_train"]).astype(np.float32),
        "probe_eval": np.stack(base["probe_eval"]).astype(np.float32),
        "sample": np.stack(base["sample"]).astype(np.float32),
        "travel": travel,
        "key_travel": np.array(base["key_travel"], dtype=np.float64),
        "chaos": chaos,
        "chaos_sample": chaos_sample,
        "meta": np.array(json.dumps(meta)),
    }
    path = out / f"{method}_{pair}.npz"
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    print(f"{path}: {buf.tell() / 1024:.0f} KiB, terms step 1 {arrays['terms'][0].round(5).tolist()}, "
          f"travel {travel[0]:.4g} -> {travel[-1]:.4g}, chaos {chaos[0]:.2e} -> {chaos[-1]:.2e} "
          f"({meta['seconds']} s)", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="an extracted checkout of mdistiller")
    parser.add_argument("--commit", help="the reference's commit (read with git when the checkout has .git)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--pairs", default=",".join(PAIRS))
    parser.add_argument("--out", type=Path, default=OUT, help="where the .npz files go (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ref = load_reference(args.reference.resolve())
    commit = reference_commit(args.reference, args.commit)
    for method in args.methods.split(","):
        for pair in args.pairs.split(","):
            make(ref, method, pair, commit, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
