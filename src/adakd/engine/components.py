"""Building a run's parts, in one place: the trainer, the fast-path probe, the bench, the dry run and
the API all call these, so a component is set up one way everywhere.

    student = build_student(cfg.student, info)                        # seeded by the caller
    parts = build_components(spec_of(cfg), student, teacher, device=..., precision=..., num_classes=...)
    parts.distiller, parts.strategy, parts.phases
    optimizer = build_phase_optimizer(parts.phases[-1], cfg.train.optimizer, lr, device)

:func:`check_config` is ``adakd train --dry-run``: every name and option of a config checked and
every component built (models with random weights, the distiller, the strategy) and stepped once
on a synthetic batch, and the dataset's files found, in seconds, before anything trains.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import PUBLISHED_TEACHER, ModelConfig, OptimizerConfig, RunConfig
from ..errors import CheckpointError, ConfigError
from ..losses.base import DistillContext, Distiller
from ..losses.build import build_distiller, check_loss_options
from ..models import build_model
from ..models.contract import ContractModel
from ..options import check_options
from ..registry import DATASETS, DISTILLERS, MODELS, STRATEGIES
from ..runtime.device import new_grad_scaler
from ..strategies import Phase, Strategy, StrategyContext
from .checkpoint import load_checkpoint, load_model_weights, load_weights
from .fast import prefer_fused
from .optim import build_optimizer, parameters_of
from .teacher import published_teacher_file


@dataclass(frozen=True)
class ComponentSpec:
    """What a run distils with, independent of data and device: losses x strategy x CE weight."""

    losses: dict[str, dict[str, Any]] = field(default_factory=dict)
    strategy: str = "standard"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    ce_weight: float = 1.0
    epochs: int = 1
    seed: int = 0


def spec_of(cfg: RunConfig) -> ComponentSpec:
    return ComponentSpec(losses=dict(cfg.losses), strategy=cfg.strategy.name,
                         strategy_options=dict(cfg.strategy.options), ce_weight=cfg.ce_weight,
                         epochs=cfg.train.epochs, seed=cfg.seed)


@dataclass
class Components:
    """The built parts of a run (models on the device, in the chosen memory format)."""

    student: ContractModel
    teacher: ContractModel | None
    distiller: Distiller | None
    strategy: Strategy
    phases: list[Phase]


def build_student(model: ModelConfig, info: Any) -> ContractModel:
    """The configured model for the dataset ``info`` (classes, channels, image size); weights from torch's RNG."""
    return build_model(model.name, num_classes=info.num_classes, in_channels=info.in_channels,
                       image_size=info.image_size, **model.kwargs)


def to_device(module: nn.Module | None, device: torch.device, channels_last: bool) -> nn.Module | None:
    if module is not None:
        module.to(device)
        if channels_last:
            module.to(memory_format=torch.channels_last)
    return module


def build_components(spec: ComponentSpec, student: ContractModel, teacher: ContractModel | None, *,
                     device: torch.device, precision: str, num_classes: int, num_train: int,
                     channels_last: bool = False, steps_per_epoch: int = 1, val_loader: Any = None,
                     test_loader: Any = None, run_dir: Any = None, skip_nonfinite: bool = False) -> Components:
    """The distiller and the strategy of ``spec`` on ``student`` and ``teacher`` (moved to ``device``)."""
    to_device(student, device, channels_last)
    to_device(teacher, device, channels_last)
    distiller = build_distiller(spec.losses, student, teacher, num_samples=num_train)
    to_device(distiller, device, channels_last)
    strategy = STRATEGIES.build(spec.strategy, StrategyContext(
        student=student, teacher=teacher, distiller=distiller, ce_weight=spec.ce_weight, device=device,
        precision=precision, num_classes=num_classes, options=dict(spec.strategy_options),
        skip_nonfinite=skip_nonfinite, epochs=spec.epochs, val_loader=val_loader, test_loader=test_loader,
        run_dir=run_dir, steps_per_epoch=steps_per_epoch, seed=spec.seed,
        grad_scaler=new_grad_scaler(device, precision)))
    return Components(student, teacher, distiller, strategy, strategy.phases())


def build_phase_optimizer(phase: Phase, ocfg: OptimizerConfig, lr: float, device: torch.device
                          ) -> torch.optim.Optimizer:
    """The configured optimiser over the phase's modules (foreach; fused on CUDA)."""
    return prefer_fused(build_optimizer(parameters_of(phase.modules), ocfg, lr), device)


def synthetic_batch(batch_size: int, shape: tuple[int, int, int], num_classes: int, num_samples: int,
                    device: torch.device, channels_last: bool = False) -> Any:
    """A normalised-looking random batch (N(0, 1) pixels) from a private generator (no RNG of the run used)."""
    from ..data import Batch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *shape), generator=gen)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen)
    index = torch.arange(batch_size) % max(num_samples, 1)
    x = x.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return Batch(x, y.to(device), index.to(device))


# ----------------------------------------------------------------------------------------------- the dry run
def check_names_and_options(cfg: RunConfig) -> None:
    """Every registered name of ``cfg`` exists and every loss / strategy option is typed right."""
    MODELS.get(cfg.student.name)
    DATASETS.get(cfg.data.name)
    strategy = STRATEGIES.get(cfg.strategy.name).factory
    if cfg.teacher is not None:
        MODELS.get(cfg.teacher.name)
    for name, options in cfg.losses.items():
        check_loss_options(name, options)
    if hasattr(strategy, "check_options"):
        strategy.check_options(cfg.strategy.options)


def published_teacher_weights(cfg: RunConfig, teacher: nn.Module | None) -> str | None:
    """``teacher.checkpoint: published`` in a dry run: the released file loaded into ``teacher`` (it fits), or
    the line saying the recipe would train it instead; one error when neither is possible."""
    if teacher is None or cfg.teacher is None or cfg.teacher.checkpoint != PUBLISHED_TEACHER:
        return None
    lines: list[str] = []
    path = published_teacher_file(cfg.teacher, cfg, lines.append)
    if path is not None:
        load_model_weights(teacher, path, cfg.teacher.format, f"published teacher {path}")
    return lines[0]


def _dumped(model: Any) -> dict[str, Any]:
    """An options model as plain data (YAML-safe); an option of an arbitrary type as its repr."""
    try:
        return model.model_dump(mode="json")
    except Exception:  # an arbitrary type pydantic cannot serialise
        return {k: v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v)
                for k, v in model.model_dump().items()}


def resolved_options(cfg: RunConfig) -> dict[str, Any]:
    """Every option of the strategy and of each distiller as this code resolves it, defaults included:
    ``{"strategy": {"name", "options"}, "losses": {name: options}}`` (a loss's ``weight: None`` is its
    ``default_weight``). Written beside a run's config (``resolved.yaml``), so that a default changed
    between a run's start and its resume is a difference :mod:`.resume` lists."""
    strategy = STRATEGIES.get(cfg.strategy.name).factory
    options = strategy.check_options(cfg.strategy.options) if hasattr(strategy, "check_options") else None
    losses: dict[str, Any] = {}
    for name, given in cfg.losses.items():
        cls = DISTILLERS.get(name).factory
        resolved = _dumped(check_options(cls.options_model(), dict(given or {}), f"losses.{name}"))
        if "weight" in resolved and resolved["weight"] is None and hasattr(cls, "default_weight"):
            resolved["weight"] = float(cls.default_weight)
        losses[name] = resolved
    return {"strategy": {"name": cfg.strategy.name,
                         "options": dict(cfg.strategy.options) if options is None else _dumped(options)},
            "losses": losses}


def check_config(cfg: RunConfig, data: bool = True) -> dict[str, Any]:
    """``adakd train --dry-run``: names, options, the dataset's files (``data``), and every component built
    from random weights (a published teacher: its file, when there) and stepped once (each phase) on a synthetic
    batch, on the CPU. Returns what was built."""
    from ..data.build import open_dataset

    check_names_and_options(cfg)
    dataset = open_dataset(cfg.data.name, cfg.data.root, cfg.data.download, cfg.data.image_size, **cfg.data.options)
    info = dataset.info
    if data:  # the files are there and readable (arrays decode; image folders are listed, not decoded)
        for split in ("train", "test"):
            dataset.samples(split)
    cpu = torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student = build_student(cfg.student, info)
        teacher = build_student(cfg.teacher, info).eval().requires_grad_(False) if cfg.teacher is not None else None
        teacher_weights = published_teacher_weights(cfg, teacher)  # (draws no random numbers)
        batch_size = min(cfg.data.batch_size, 8)
        val = None
        if float(cfg.data.val_fraction) > 0:  # ABL's search reads a validation loader: a synthetic one
            val = [synthetic_batch(batch_size, (info.in_channels, info.image_size, info.image_size),
                                   info.num_classes, 64, cpu)]
        parts = build_components(spec_of(cfg), student, teacher, device=cpu, precision="fp32",
                                 num_classes=info.num_classes, num_train=64, val_loader=val, test_loader=val)
        batch = synthetic_batch(batch_size, (info.in_channels, info.image_size, info.image_size),
                                info.num_classes, 64, cpu)
        ctx = DistillContext(labels=batch.y, indices=batch.index, epoch=0, step=0, epochs_total=1, progress=0.0)
        for phase in parts.phases:
            if phase.on_start is not None:
                phase.on_start()
            phase.model.train()
            optimizer = build_phase_optimizer(phase, cfg.train.optimizer, cfg.train.optimizer.lr, cpu)
            out = phase.step(batch, ctx, optimizer)
            if not all(torch.isfinite(v).all() for k, v in out.items() if k != "correct"):
                raise ConfigError(f"dry run: phase {phase.name!r} gave a non-finite loss on a random batch "
                                  f"({ {k: float(v) for k, v in out.items() if k != 'correct'} }); check the loss "
                                  "weights and the lr.")
    return {"dataset": info.name, "image_shape": (info.in_channels, info.image_size, info.image_size),
            "classes": info.num_classes, "student": type(student).__name__,
            "teacher": None if teacher is None else type(teacher).__name__, "teacher_weights": teacher_weights,
            "losses": list(cfg.losses), "strategy": cfg.strategy.name, "phases": [p.name for p in parts.phases]}


# ----------------------------------------------------------------------------------- students from checkpoints
#: ``which`` student of a run directory: the final epoch's, the best epoch's, or the last training state's.
STUDENT_CHECKPOINTS = {"final": "student.pt", "best": "best.pt", "last": "last.pt"}


def resolve_checkpoint(target: str | Path, which: str = "final") -> Path:
    """``RUN_DIR/checkpoints/<student.pt | best.pt | last.pt>`` (``which``), or ``target`` itself when it is a file."""
    if which not in STUDENT_CHECKPOINTS:
        raise ConfigError(f"which={which!r}: choose final (the last epoch's student), best (the best epoch's) or "
                          "last (the latest training state, also of an unfinished run).")
    target = Path(target).expanduser()
    if target.is_file():
        return target
    if not target.is_dir():
        raise CheckpointError(f"{target} not found: point at a run directory (runs/<name>) or a .pt checkpoint.")
    path = target / "checkpoints" / STUDENT_CHECKPOINTS[which]
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: is {target} a finished run? Try which=last (--which last) "
                              "for an unfinished one.")
    return path


def load_student(path: str | Path) -> tuple[ContractModel, dict[str, Any]]:
    """The student of an adakd checkpoint, rebuilt from its ``meta`` with its weights, in eval mode on the CPU."""
    state = load_checkpoint(path)
    meta = state.get("meta")
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{path} carries no model description (meta): it is not an adakd student checkpoint "
                              "(RUN_DIR/checkpoints/student.pt, best.pt or last.pt). For other weights (a "
                              "RepDistiller/mdistiller file, a state_dict) name the architecture and the data: "
                              "adakd eval FILE --model NAME --data DATASET, or adakd.build_model(NAME, weights=FILE).")
    model = build_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                        image_size=meta["image_size"], **meta.get("kwargs", {}))
    load_weights(model, state["model"], f"checkpoint {path}")
    return model.eval(), meta


__all__ = ["ComponentSpec", "Components", "spec_of", "build_student", "build_components", "build_phase_optimizer",
           "synthetic_batch", "check_names_and_options", "resolved_options", "check_config", "STUDENT_CHECKPOINTS",
           "resolve_checkpoint", "load_student"]
