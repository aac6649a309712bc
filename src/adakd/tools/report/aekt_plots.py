"""AEKT's class-relation plots: the task-serialization layer's C x C weights (paper Fig. 3)
and the classes most related to one class (Fig. 4: the k largest |w_ij| of its row)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import ConfigError
from ...runtime.atomic import atomic_savefig


def top_related_classes(weight: np.ndarray, class_index: int, k: int = 20) -> np.ndarray:
    """Indices of row ``class_index``'s k largest |w_ij|, j != class_index, largest first."""
    row = np.abs(np.asarray(weight, dtype=np.float64)[class_index])
    others = np.array([j for j in range(row.shape[0]) if j != class_index], dtype=np.int64)
    order = np.argsort(-row[others], kind="stable")[:k]
    return others[order]


def plot_class_relations(weight: np.ndarray, class_names: Sequence[str] | None, path: str | Path,
                         top_k_class: int | None = None, k: int = 20) -> Path:
    """Save the C x C heatmap of ``weight`` (w_ij at row i, column j) and, when ``top_k_class``
    is given, a bar chart of that class's ``k`` most related classes (signed weights).

    Needs matplotlib (``pip install "adakd[plot]"``). The colour scale is symmetric about 0
    and set by the off-diagonal entries, so the identity-like diagonal does not wash them out.
    """
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
        raise ConfigError(f"plot_class_relations: weight must be a square C x C matrix (got shape {weight.shape}).")
    num_classes = weight.shape[0]
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ConfigError(f"plot_class_relations: {len(names)} class names for {num_classes} classes.")
    if top_k_class is not None and not 0 <= top_k_class < num_classes:
        raise ConfigError(f"plot_class_relations: top_k_class {top_k_class} is out of range [0, {num_classes}).")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError('plotting needs matplotlib: pip install "adakd[plot]".') from None

    off_diag = weight[~np.eye(num_classes, dtype=bool)]
    limit = float(np.abs(off_diag).max()) if off_diag.size else 1.0
    limit = limit if limit > 0 else 1.0

    panels = 1 if top_k_class is None else 2
    fig = Figure(figsize=(7 * panels, 6), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]

    ax = axes[0]
    image = ax.imshow(weight, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="w_ij (diagonal clipped)")
    ax.set_title("Task-serialization layer weights")
    ax.set_xlabel("student logit j")
    ax.set_ylabel("serialized class i")
    if num_classes <= 30:
        ax.set_xticks(range(num_classes), names, rotation=90, fontsize=7)
        ax.set_yticks(range(num_classes), names, fontsize=7)

    if top_k_class is not None:
        top = top_related_classes(weight, top_k_class, k)
        values = weight[top_k_class, top]
        bars = axes[1]
        bars.barh(range(len(top)), values, color=["tab:red" if v > 0 else "tab:blue" for v in values])
        bars.set_yticks(range(len(top)), [names[j] for j in top], fontsize=8)
        bars.invert_yaxis()
        bars.axvline(0.0, color="black", linewidth=0.8)
        bars.set_xlabel("w_ij")
        bars.set_title(f"Top {len(top)} classes related to {names[top_k_class]!r} (largest |w_ij|)")

    return atomic_savefig(fig, path, dpi=120)  # written whole, then renamed: never a half-written plot


# --------------------------------------------------------------------------- `adakd plot RUN_DIR`
def _serializer_weight(run_dir: Path) -> np.ndarray | None:
    """The learned C x C serialization layer of an AEKT run (from checkpoints/last.pt), or None."""
    from ...engine.checkpoint import load_checkpoint

    path = run_dir / "checkpoints" / "last.pt"
    if not path.exists():
        return None
    state = load_checkpoint(path)  # weights only: a crafted file cannot run code
    distiller = state.get("distiller") or {}
    for key, value in distiller.items():
        if key.endswith("serializer.weight"):
            return value.float().numpy()
    return None


def _class_names(run_dir: Path) -> list[str] | None:
    import yaml

    from ...data import open_dataset

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        data = cfg["data"]
        return list(open_dataset(data["name"], root=data.get("root"), **data.get("options", {})).info.class_names)
    except Exception:  # names are a nicety: fall back to indices
        return None


def _register() -> None:
    from .plots import register_plotter

    @register_plotter("aekt")
    def plot_aekt_run(run_dir: Path, out_dir: Path) -> list[Path]:
        weight = _serializer_weight(run_dir)
        if weight is None:
            return []
        names = _class_names(run_dir)
        np.save(out_dir / "aekt_class_relations.npy", weight)
        path = out_dir / "aekt_class_relations.png"
        plot_class_relations(weight, names, path, top_k_class=0, k=min(20, weight.shape[0] - 1))
        return [path, out_dir / "aekt_class_relations.npy"]


_register()
