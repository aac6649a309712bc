"""The reference code base's training step (mdistiller), imported from a checkout the user names.

mdistiller (https://github.com/megvii-research/mdistiller) is the code base the CIFAR-100 tables come
from; ``adakd bench --against reference`` times its step beside ours. Nothing of it ships with adakd:
it is imported only from ``--reference-path`` (a checkout: ``PATH/mdistiller/distillers/__init__.py``).

Its step, as its ``BaseTrainer.train_iter`` / ``CRDTrainer.train_iter`` does it (data loading aside):
``optimizer.zero_grad()``; ``preds, losses = distiller(image=, target=, epoch=)`` (CRD also ``index``,
``contrastive_index``); ``loss = sum(l.mean() for l in losses.values())``; ``loss.backward()``;
``optimizer.step()`` (``torch.optim.SGD(distiller.get_learnable_parameters(), lr, momentum, weight_decay)``
from its config); ``loss.cpu()`` for its meters (a host sync every step). Its models are its own
(``cifar_model_dict``), randomly initialised (the step's cost does not depend on the weights).

Only what the step needs is imported: ``mdistiller.distillers``, ``mdistiller.models`` and
``mdistiller.engine.cfg`` (its yacs defaults; the package ``mdistiller.engine`` is entered without its
``__init__``, which imports the trainer and with it tensorboardX and wandb). mdistiller calls
``.cuda()`` in places (CRD's memory bank); on a CPU device :func:`cuda_to` turns those calls into
``.to(device)`` while the reference builds and steps, leaving the checkout untouched.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ...data import Batch
from ...errors import ConfigError

#: adakd's loss name -> (mdistiller's ``DISTILLER.TYPE``, its CIFAR-100 config files to merge, first found).
REFERENCE_METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "kd": ("KD", ("kd.yaml",)),
    "dkd": ("DKD", ("dkd/res32x4_res8x4.yaml",)),
    "at": ("AT", ("at.yaml",)),
    "fitnet": ("FITNET", ("fitnet.yaml",)),
    "sp": ("SP", ("sp.yaml",)),
    "pkt": ("PKT", ("pkt.yaml",)),
    "rkd": ("RKD", ("rkd.yaml",)),
    "vid": ("VID", ("vid.yaml",)),
    "kdsvd": ("KDSVD", ("kdsvd.yaml",)),
    "reviewkd": ("REVIEWKD", ("reviewkd.yaml",)),
    "nst": ("NST", ("nst.yaml",)),
    "ofd": ("OFD", ("ofd.yaml",)),
    "crd": ("CRD", ("crd.yaml",)),
}

HOW_TO_GET = ("git clone https://github.com/megvii-research/mdistiller and pass --reference-path to the clone "
              "(or set $ADAKD_REFERENCE_PATH)")


@dataclass
class ReferenceCode:
    """The parts of an mdistiller checkout the step needs."""

    root: Path
    distillers: dict[str, Any]  # mdistiller.distillers.distiller_dict
    models: dict[str, Any]  # mdistiller.models.cifar_model_dict: name -> (builder, checkpoint path)
    cfg: Any  # mdistiller.engine.cfg.CFG (yacs CfgNode)


def check_reference_path(path: str | Path | None) -> Path:
    """The checkout's root, or one ConfigError saying what to pass."""
    if not path:
        raise ConfigError(f"--against reference needs the reference code: {HOW_TO_GET}.")
    root = Path(path).expanduser().resolve()
    if not (root / "mdistiller" / "distillers" / "__init__.py").is_file():
        raise ConfigError(f"--reference-path {path}: not an mdistiller checkout (no mdistiller/distillers/__init__.py "
                          f"under it); {HOW_TO_GET}.")
    return root


def load_reference(path: str | Path | None) -> ReferenceCode:
    """Import mdistiller from the checkout at ``path`` (and only from there); one ConfigError naming
    what is missing when it cannot be imported."""
    root = check_reference_path(path)
    loaded = sys.modules.get("mdistiller")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve().parent != root / "mdistiller":
        raise ConfigError(f"another mdistiller ({loaded.__file__}) is already imported in this process; "
                          f"run the bench in a fresh process to use {root}.")
    sys.path.insert(0, str(root))
    try:
        importlib.import_module("mdistiller")
        if "mdistiller.engine" not in sys.modules:  # its __init__ imports the trainer (tensorboardX, wandb)
            engine = types.ModuleType("mdistiller.engine")
            engine.__path__ = [str(root / "mdistiller" / "engine")]
            sys.modules["mdistiller.engine"] = engine
        cfg = importlib.import_module("mdistiller.engine.cfg").CFG
        distillers = importlib.import_module("mdistiller.distillers").distiller_dict
        models = importlib.import_module("mdistiller.models").cifar_model_dict
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise ConfigError(f"the reference code at {root} cannot be imported: module {missing!r} is missing "
                          f"({exc}); install what it needs (e.g. pip install yacs tqdm scipy) in this environment.") \
            from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))
    return ReferenceCode(root, distillers, models, cfg)


@contextlib.contextmanager
def cuda_to(device: torch.device) -> Iterator[None]:
    """While inside: ``Tensor.cuda()`` and ``Module.cuda()`` move to ``device`` instead (a CPU run of
    code that calls ``.cuda()``); nothing changes on a CUDA device."""
    if device.type == "cuda":
        yield
        return
    tensor_cuda, module_cuda = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self.to(device)  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self.to(device)  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = tensor_cuda, module_cuda  # type: ignore[method-assign]


def reference_config(code: ReferenceCode, method: str, teacher: str, student: str) -> Any:
    """mdistiller's config of ``method``: its defaults, its CIFAR-100 file for the method, our pair."""
    if method not in REFERENCE_METHODS:
        raise ConfigError(f"no reference mapping for {method!r}; methods: {', '.join(REFERENCE_METHODS)}.")
    kind, files = REFERENCE_METHODS[method]
    if kind not in code.distillers:
        raise ConfigError(f"the reference at {code.root} has no distiller {kind!r} "
                          f"(it has {', '.join(sorted(code.distillers))}).")
    cfg = code.cfg.clone()
    for name in files:
        path = code.root / "configs" / "cifar100" / name
        if path.is_file():
            cfg.merge_from_file(str(path))
            break
    cfg.DISTILLER.TYPE, cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT = kind, teacher, student
    return cfg


class ReferenceStep:
    """mdistiller's distiller, optimiser and training step for one method (see the module docstring)."""

    def __init__(self, code: ReferenceCode, method: str, teacher: str, student: str, num_classes: int,
                 batches: Iterator[Batch], num_data: int, device: torch.device, seed: int = 0) -> None:
        self.cfg = reference_config(code, method, teacher, student)
        self.kind, self.device, self.batches, self.num_data = self.cfg.DISTILLER.TYPE, device, batches, num_data
        for name in (teacher, student):
            if name not in code.models:
                raise ConfigError(f"the reference has no CIFAR model {name!r}.")
        torch.manual_seed(seed)
        with cuda_to(device):
            t = code.models[teacher][0](num_classes=num_classes)
            s = code.models[student][0](num_classes=num_classes)
            extra = (num_data,) if self.kind == "CRD" else ()
            self.distiller = code.distillers[self.kind](s, t, self.cfg, *extra).to(device)
        self.distiller.train()
        solver = self.cfg.SOLVER
        self.optimizer = torch.optim.SGD(self.distiller.get_learnable_parameters(), lr=solver.LR,
                                         momentum=solver.MOMENTUM, weight_decay=solver.WEIGHT_DECAY)

    def _contrastive_index(self, index: torch.Tensor) -> torch.Tensor:
        """CRD's sampled negatives, as its data set draws them: the positive first, then K random rows."""
        k = self.cfg.CRD.NCE.K
        negatives = torch.randint(0, self.num_data, (index.shape[0], k), device=index.device)
        return torch.cat([index[:, None], negatives], dim=1)

    def step(self, batch: Batch) -> float:
        self.optimizer.zero_grad()
        kwargs: dict[str, Any] = {"image": batch.x.float(), "target": batch.y, "epoch": 1}
        if self.kind == "CRD":
            kwargs.update(index=batch.index, contrastive_index=self._contrastive_index(batch.index))
        with cuda_to(self.device):
            _, losses = self.distiller(**kwargs)
        loss = sum(v.mean() for v in losses.values())
        loss.backward()
        self.optimizer.step()
        return float(loss.detach().cpu())  # its meters: loss.cpu() every step

    def window(self, steps: int) -> tuple[float, float]:
        """Run ``steps`` steps on fresh batches; (seconds, mean loss)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        total = sum(self.step(next(self.batches)) for _ in range(steps))
        return time.perf_counter() - start, total / steps


__all__ = ["REFERENCE_METHODS", "ReferenceCode", "ReferenceStep", "check_reference_path", "load_reference",
           "cuda_to", "reference_config"]
