"""Training curves of several runs on one figure: ``adakd plot RUN1 RUN2 ... --out DIR``.

``compare.png``: test top-1 (%), training loss and test loss over epochs, one line per run.
``compare_gradients.png`` (when a run recorded them, see :mod:`.analysis_plots`): the mean
gradient magnitude of the first and last layer over epochs (the ABL paper's Fig. 5 b/c).

Runs with several phases (ABL: search then retrain; AB/FT/FSP connector pre-training) are drawn
by their last phase (the one that trains the reported student), against that phase's epoch, so
the runs line up; ``phase="all"`` draws every epoch against the global epoch instead.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ...errors import AdakdError, ConfigError
from ...runtime.atomic import atomic_savefig
from .curves import read_epochs
from .plots import require_matplotlib

GRAD_KEYS = ("grad_first_layer", "grad_last_layer")


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Each run's folder name; ``parent/name`` where names repeat."""
    names = [p.name for p in run_dirs]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in run_dirs]


def comparable_records(run_dir: Path, phase: str = "last") -> tuple[list[dict[str, Any]], str]:
    """(epoch records to draw, name of the x key) of one run."""
    records = read_epochs(run_dir)
    if phase == "all" or not records:
        return records, "epoch"
    if phase != "last":
        raise ConfigError(f"phase={phase!r}: use 'last' (the phase that trains the reported student) or 'all'.")
    last = records[-1].get("phase")
    chosen = [r for r in records if r.get("phase") == last]
    if len(chosen) == len(records) or not all("phase_epoch" in r for r in chosen):
        return chosen, "epoch"  # one phase: its epochs are the run's
    return chosen, "phase_epoch"


def _series(records: list[dict[str, Any]], xkey: str, ykey: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        value = r.get(ykey)
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(r[xkey])
            ys.append(float(value))
    return xs, ys


def plot_compare(run_dirs: Sequence[str | Path], out_dir: str | Path, labels: Sequence[str] | None = None,
                 phase: str = "last") -> list[Path]:
    """Draw the runs' curves into ``out_dir``; returns the written PNGs."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ConfigError("plot_compare needs at least one run directory.")
    for d in dirs:
        if not (d / "metrics.jsonl").is_file():
            raise AdakdError(f"{d} is not a run directory (no metrics.jsonl); point at runs/<name>.")
    names = list(labels) if labels is not None else run_labels(dirs)
    if len(names) != len(dirs):
        raise ConfigError(f"{len(names)} labels for {len(dirs)} runs.")
    runs = [(name, *comparable_records(d, phase)) for name, d in zip(names, dirs)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plt = require_matplotlib()
    written = [_draw(plt, runs, [("test_top1", "test top-1 (%)"), ("loss", "training loss"),
                                 ("test_loss", "test loss")], out / "compare.png", log_y=False)]
    if any(key in r for _, records, _ in runs for r in records for key in GRAD_KEYS):
        written.append(_draw(plt, runs, [("grad_first_layer", "first layer: mean |grad|"),
                                         ("grad_last_layer", "last layer: mean |grad|")],
                             out / "compare_gradients.png", log_y=True))
    return written


def _draw(plt: Any, runs: list[tuple[str, list[dict[str, Any]], str]], panels: list[tuple[str, str]],
          path: Path, log_y: bool) -> Path:
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        drawn = False
        for name, records, xkey in runs:
            xs, ys = _series(records, xkey, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, markersize=3, label=name)
                drawn = True
        xlabel = "epoch" if all(xkey == "epoch" for _, _, xkey in runs) else "epoch (of the final phase)"
        ax.set(title=title, xlabel=xlabel)
        if log_y and drawn:
            ax.set_yscale("log")
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path
