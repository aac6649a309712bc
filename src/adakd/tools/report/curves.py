"""Training curves of one run: loss, train/test top-1 and lr over epochs."""
from __future__ import annotations

import json
from pathlib import Path

from ...runtime.atomic import atomic_savefig
from .plots import register_plotter, require_matplotlib


def read_epochs(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = []
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("kind", "epoch") == "epoch":
            records.append(r)
    return records


@register_plotter("curves")
def plot_curves(run_dir: Path, out_dir: Path) -> list[Path]:
    records = read_epochs(run_dir)
    if not records:
        return []
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    epochs = [r["epoch"] for r in records]
    axes[0].plot(epochs, [r.get("loss", float("nan")) for r in records], label="total")
    for key in sorted({k for r in records for k in r} - {"loss"}):
        if key in ("ce", "kd", "tckd", "nckd", "aekt") or key.startswith(("rkd", "dist")):
            axes[0].plot(epochs, [r.get(key, float("nan")) for r in records], label=key, alpha=0.7)
    axes[0].set(title="training loss", xlabel="epoch")
    axes[0].legend(fontsize=7)
    axes[1].plot(epochs, [r.get("train_top1", float("nan")) for r in records], label="train")
    tested = [r for r in records if "test_top1" in r]  # train.eval_every > 1: the evaluated epochs only
    axes[1].plot([r["epoch"] for r in tested], [r["test_top1"] for r in tested], label="test",
                 marker="o" if len(tested) < len(records) else None, markersize=3)
    axes[1].set(title="top-1 (%)", xlabel="epoch")
    axes[1].legend(fontsize=7)
    axes[2].plot(epochs, [r.get("lr", float("nan")) for r in records])
    axes[2].set(title="learning rate (epoch end)", xlabel="epoch")
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    path = out_dir / "curves.png"
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return [path]
