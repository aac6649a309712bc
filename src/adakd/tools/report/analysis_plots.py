"""The ABL paper's analyses of a run ("Adaptive Block-wise Learning for Knowledge Distillation",
ICLR 2023 submission, Figs. 4 a/b and 5 b/c; docs/methods.md section 1).

1. **Logit-correlation difference** (Fig. 4 a/b; the CRD/DKD papers' visualisation). For the N x C
   logits Z of a model on the test split, R[i, j] = corr(Z[:, i], Z[:, j]) (Pearson over samples;
   0 off the diagonal for a constant column). The plot shows D = |R_teacher - R_student| (C x C) and
   its mean: small means the student reproduces the teacher's inter-class structure.
   :func:`compute_logit_correlation` computes it for the final logits and, where a strategy
   has per-block logits (``Strategy.block_logits``, e.g. ABL's auxiliary heads), for
   each block's logits against the teacher's final logits; it saves
   ``RUN_DIR/analysis/logit_correlation.npz``, which the ``analysis`` plotter draws.
2. **Gradient magnitude of the first and last layer over training** (Fig. 5 b/c: no vanishing
   gradient under ABL). :class:`GradientMagnitudeRecorder` is opt-in: it averages mean |g| of the
   first layer's and the classifier's weight over the optimiser steps of each epoch and adds
   ``grad_first_layer`` / ``grad_last_layer`` to metrics.jsonl (``callbacks=[GradientMagnitudeCallback()]``
   in the Python API; the ``analysis`` plotter draws ``gradients.png`` when present).

``adakd plot RUN --analysis`` computes (1) and draws both.
"""
from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import AdakdError, ConfigError
from ...engine.callbacks import Callback
from ...runtime.atomic import atomic_savefig, atomic_write, atomic_write_text
from .curves import read_epochs
from .plots import register_plotter, require_matplotlib

if TYPE_CHECKING:
    from ...engine.trainer import Trainer

ANALYSIS_DIR = "analysis"
CORRELATION_FILE = "logit_correlation.npz"
GRAD_KEYS = ("grad_first_layer", "grad_last_layer")

# --------------------------------------------------------------------------- 1. logit correlations


def logit_correlation(logits: Tensor | np.ndarray) -> np.ndarray:
    """C x C Pearson correlation (float64) between the class columns of N x C ``logits``.

    R = (Zc^T Zc) / (s s^T) with Zc the column-centred logits and s_i = ||Zc[:, i]||; a constant
    column (s_i = 0) correlates 0 with every other column and 1 with itself.
    """
    z = logits.detach().cpu().double().numpy() if isinstance(logits, Tensor) else np.asarray(logits, np.float64)
    if z.ndim != 2 or z.shape[0] < 2:
        raise ConfigError(f"logit_correlation needs N x C logits with N >= 2 (got shape {z.shape}).")
    zc = z - z.mean(axis=0, keepdims=True)
    norms = np.sqrt((zc * zc).sum(axis=0))
    safe = np.where(norms > 0, norms, 1.0)
    r = (zc.T @ zc) / np.outer(safe, safe)
    r[norms == 0, :] = 0.0
    r[:, norms == 0] = 0.0
    np.fill_diagonal(r, 1.0)
    return np.clip(r, -1.0, 1.0)


def correlation_difference(student_logits: Tensor | np.ndarray, teacher_logits: Tensor | np.ndarray) -> np.ndarray:
    """|R_teacher - R_student| (C x C), the matrix of the ABL paper's Fig. 4 a/b."""
    rs, rt = logit_correlation(student_logits), logit_correlation(teacher_logits)
    if rs.shape != rt.shape:
        raise ConfigError(f"student and teacher have different class counts ({rs.shape[0]} vs {rt.shape[0]}).")
    return np.abs(rt - rs)


@torch.no_grad()
def collect_logits(model: nn.Module, loader: Any, extra: Callable[[Tensor], list[Tensor]] | None = None,
                   max_samples: int | None = None) -> tuple[Tensor, list[Tensor]]:
    """(N x C logits of ``model`` on ``loader``, per-block logits from ``extra`` if given), in eval mode."""
    was_training = model.training
    model.eval()
    outs: list[Tensor] = []
    blocks: list[list[Tensor]] = []
    seen = 0
    try:
        for batch in loader:
            outs.append(model(batch.x).float().cpu())
            if extra is not None:
                blocks.append([b.float().cpu() for b in extra(batch.x)])
            seen += batch.x.shape[0]
            if max_samples is not None and seen >= max_samples:
                break
    finally:
        model.train(was_training)
    logits = torch.cat(outs)[:max_samples]
    per_block = [torch.cat(col)[:max_samples] for col in zip(*blocks)] if blocks else []
    return logits, per_block


def _teacher_checkpoint(cfg: Any) -> Path:
    """The run's teacher weights without training anything: the configured (or published) checkpoint or the
    cached recipe."""
    from ...config import PUBLISHED_TEACHER
    from ...engine.published_teachers import published_path
    from ...engine.teacher import cache_root, recipe_config, recipe_key

    teacher = cfg.teacher
    if teacher.checkpoint == PUBLISHED_TEACHER:
        path = published_path(teacher.name, cfg.data.name)
    elif teacher.checkpoint:
        path = Path(teacher.checkpoint).expanduser()
    if not teacher.checkpoint or (teacher.recipe and not path.is_file()):  # the recipe (also a published fallback)
        path = cache_root() / recipe_key(recipe_config(teacher, cfg)) / "checkpoints" / "student.pt"
    if not (path.is_file() or path.is_dir()):
        raise AdakdError(f"the run's teacher checkpoint {path} is missing (cache cleared or ADAKD_CACHE changed?); "
                         "set teacher.checkpoint in the run's config.yaml to the teacher's weights.")
    return path


def evaluation_loader(data_cfg: Any, device: torch.device) -> tuple[Any, Any]:
    """(loader over the test split as the run evaluated it -- same test_subset --, DatasetInfo), without
    reading the training split (which for ImageNet-size folders would not fit)."""
    from ...data import DeviceLoader, balanced_subset, open_dataset

    dataset = open_dataset(data_cfg.name, data_cfg.root, data_cfg.download, data_cfg.image_size, **data_cfg.options)
    images, labels = dataset.load("test")
    if data_cfg.test_subset is not None:
        keep = balanced_subset(labels, data_cfg.test_subset, data_cfg.seed)
        images, labels = images[keep], labels[keep]
    info = dataset.info
    loader = DeviceLoader(images, labels, batch_size=data_cfg.eval_batch_size, mean=info.mean, std=info.std,
                          device=device)
    return loader, info


def compute_logit_correlation(run_dir: str | Path, which: str = "final", data_root: str | None = None,
                              device: str = "cpu", max_samples: int | None = None) -> dict[str, Any]:
    """Teacher-vs-student logit-correlation differences of a distillation run on its test split.

    Saves ``RUN_DIR/analysis/logit_correlation.npz`` (``final``: C x C difference; ``block_<l>``:
    per-block differences when the strategy has a block-logits hook) and returns
    ``{"path", "mean_final", "mean_blocks": [...], "samples"}``.
    """
    from ...config import load_config
    from ...runtime.device import resolve_device
    from ...engine.teacher import load_teacher
    from ...engine.components import load_student, resolve_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise AdakdError(f"{run_dir} is not a run directory (no config.yaml); point at runs/<name>.")
    cfg = load_config(run_dir / "config.yaml")
    if cfg.teacher is None:
        raise AdakdError(f"{run_dir} has no teacher (a plain training run): the logit-correlation analysis "
                         "compares a distilled student with its teacher.")
    dev = resolve_device(device)
    data_cfg = cfg.data.model_copy(update={"root": data_root}) if data_root else cfg.data
    test, info = evaluation_loader(data_cfg, dev)
    student, _ = load_student(resolve_checkpoint(run_dir, which))
    student.to(dev)
    teacher = load_teacher(cfg.teacher, info, dev, _teacher_checkpoint(cfg))
    extra = None
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():  # the strategy's per-block logits (ABL's auxiliary heads), from its last training state
        from ...engine.checkpoint import load_checkpoint
        from ...registry import STRATEGIES

        state = load_checkpoint(last).get("strategy") or {}
        extra = STRATEGIES.get(cfg.strategy.name).factory.block_logits(state, cfg.strategy.options, student,
                                                                        info.num_classes)
    z_s, blocks = collect_logits(student, test, extra, max_samples)
    z_t, _ = collect_logits(teacher, test, None, max_samples)
    arrays = {"final": correlation_difference(z_s, z_t)}
    for index, z_b in enumerate(blocks, start=1):
        arrays[f"block_{index}"] = correlation_difference(z_b, z_t)
    path = atomic_write(run_dir / ANALYSIS_DIR / CORRELATION_FILE, lambda f: np.savez_compressed(f, **arrays))
    return {"path": str(path), "samples": int(z_s.shape[0]), "mean_final": float(arrays["final"].mean()),
            "mean_blocks": [float(arrays[f"block_{i}"].mean()) for i in range(1, len(blocks) + 1)]}


def plot_logit_correlation(arrays: dict[str, np.ndarray], path: Path, title: str = "") -> Path:
    """Heatmaps of |R_T - R_S|: the final logits first, then each block (a shared colour scale)."""
    plt = require_matplotlib()
    keys = ["final"] + sorted((k for k in arrays if k.startswith("block_")), key=lambda k: int(k.split("_")[1]))
    keys = [k for k in keys if k in arrays]
    cols = min(len(keys), 4)
    rows = -(-len(keys) // cols)
    vmax = max(float(arrays[k].max()) for k in keys) or 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    image = None
    for ax, key in zip(axes.flat, keys):
        d = arrays[key]
        image = ax.imshow(d, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        label = "final logits" if key == "final" else f"block {key.split('_')[1]} (auxiliary head)"
        ax.set_title(f"{label}: mean {d.mean():.3f}", fontsize=9)
        ax.set_xlabel("class")
        ax.set_ylabel("class")
    fig.colorbar(image, ax=list(axes.flat), shrink=0.8, label="|R_teacher - R_student|")
    fig.suptitle(title or "teacher vs student: difference of class-logit correlations")
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- 2. gradient magnitudes


def first_and_last_layer(model: nn.Module) -> tuple[tuple[str, nn.Parameter], tuple[str, nn.Parameter]]:
    """(name, weight) of the first conv/linear layer in module order and of the classifier (``model.fc``,
    else the last conv/linear layer)."""
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and isinstance(getattr(m, "weight", None), nn.Parameter)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Conv2d/Linear layer to record gradients of.")
    first = layers[0]
    fc = getattr(model, "fc", None)
    last = next(((n, m) for n, m in layers if m is fc), layers[-1])
    return (f"{first[0]}.weight", first[1].weight), (f"{last[0]}.weight", last[1].weight)


class GradientMagnitudeRecorder:
    """Mean |g| of the first and last layer's weight at every optimiser step that updates them,
    averaged over an epoch: ``g1 = mean_steps mean_i |dL/dW_first[i]|`` (same for the last layer).

    It reads the gradients just before ``optimizer.step()`` (a global optimiser step pre-hook,
    filtered to optimisers holding those weights), so it sees the gradient each strategy actually
    applies (ABL's gamma-mixed one included) without changes to the trainer or the strategies.
    Sums stay on the device (no host sync per step). Call :meth:`close` to remove the hook.
    """

    def __init__(self, model: nn.Module) -> None:
        (self.first_name, self._first), (self.last_name, self._last) = first_and_last_layer(model)
        self._owners: "weakref.WeakKeyDictionary[torch.optim.Optimizer, bool]" = weakref.WeakKeyDictionary()
        self._sums: list[Tensor] | None = None
        self._steps = 0
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self._handle = register_optimizer_step_pre_hook(self._on_step)

    def _owns(self, optimizer: torch.optim.Optimizer) -> bool:
        if optimizer not in self._owners:
            self._owners[optimizer] = any(p is self._first or p is self._last
                                          for group in optimizer.param_groups for p in group["params"])
        return self._owners[optimizer]

    def _on_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._owns(optimizer):
            return
        grads = [self._first.grad, self._last.grad]
        if any(g is None for g in grads):
            return
        values = [g.detach().abs().mean().float() for g in grads]
        self._sums = values if self._sums is None else [s + v for s, v in zip(self._sums, values)]
        self._steps += 1

    def epoch_metrics(self) -> dict[str, float]:
        """``grad_first_layer`` / ``grad_last_layer`` averaged since the last call (empty if no step)."""
        if self._sums is None or not self._steps:
            return {}
        out = {key: float(s.item()) / self._steps for key, s in zip(GRAD_KEYS, self._sums)}
        self._sums, self._steps = None, 0
        return out

    def close(self) -> None:
        self._handle.remove()


class GradientMagnitudeCallback(Callback):
    """The gradient record of a run, as a trainer callback: ``train(cfg, callbacks=[GradientMagnitudeCallback()])``.

    At set-up a :class:`GradientMagnitudeRecorder` watches the student; each epoch record gets its means
    (``grad_first_layer`` / ``grad_last_layer``); the layer names go to ``RUN_DIR/analysis/grad_layers.json``;
    the hook is removed when the run ends."""

    def __init__(self) -> None:
        self.recorder: GradientMagnitudeRecorder | None = None

    def on_setup(self, trainer: "Trainer") -> None:
        self.recorder = GradientMagnitudeRecorder(trainer.student)
        if trainer.dist.is_main:
            atomic_write_text(trainer.run_dir.path / ANALYSIS_DIR / "grad_layers.json", json.dumps(
                {"grad_first_layer": self.recorder.first_name, "grad_last_layer": self.recorder.last_name}) + "\n")

    def on_epoch_end(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        if self.recorder is not None:
            record.update(self.recorder.epoch_metrics())

    def on_run_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.close()


def plot_gradient_magnitudes(records: list[dict[str, Any]], path: Path, layer_names: dict[str, str] | None = None,
                             title: str = "") -> Path:
    """First- and last-layer mean |grad| over epochs (log scale), one panel each."""
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    names = layer_names or {}
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for ax, key, what in zip(axes, GRAD_KEYS, ("first layer", "last layer")):
        pts = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if pts:
            ax.plot(*zip(*pts), marker="o" if len(pts) < 15 else None, markersize=3)
            ax.set_yscale("log")
        ax.set(title=f"{what} ({names[key]})" if key in names else what, xlabel="epoch", ylabel="mean |grad|")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title or "mean gradient magnitude per epoch")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- the plotter


@register_plotter("analysis")
def plot_analysis(run_dir: Path, out_dir: Path) -> list[Path]:
    """``gradients.png`` and ``logit_correlation.png`` when the run has recorded their data."""
    written: list[Path] = []
    records = read_epochs(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
    if any(key in r for r in records for key in GRAD_KEYS):
        names_file = run_dir / ANALYSIS_DIR / "grad_layers.json"
        names = json.loads(names_file.read_text()) if names_file.is_file() else None
        written.append(plot_gradient_magnitudes(records, out_dir / "gradients.png", names, run_dir.name))
    corr = run_dir / ANALYSIS_DIR / CORRELATION_FILE
    if corr.is_file():
        with np.load(corr) as data:
            arrays = {k: data[k] for k in data.files}
        written.append(plot_logit_correlation(arrays, out_dir / "logit_correlation.png", run_dir.name))
    return written
