"""SAKD's routing plots for ``adakd plot RUN_DIR``: where the student was distilled.

* ``sakd_routing.png``: the fraction of training samples routed to the teacher (distilled) at
  each spot, per epoch (``route_teacher.<spot>`` in metrics.jsonl);
* ``sakd_routing_per_class.png``: the expected fraction per class and spot on the test split at
  the end of training (``sakd_routing`` in summary.json / RUN_DIR/sakd_routing.json).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...runtime.atomic import atomic_savefig
from .curves import read_epochs
from .plots import register_plotter, require_matplotlib

ROUTE_PREFIX = "route_teacher."  # the key prefix SAKDStrategy.epoch_metrics writes


def routing_over_epochs(records: list[dict[str, Any]]) -> tuple[list[int], dict[str, list[float]]]:
    """Epochs and, per spot, the routed fraction at each epoch (NaN where an epoch has none)."""
    spots: list[str] = []
    for r in records:
        for k in r:
            if k.startswith(ROUTE_PREFIX) and k[len(ROUTE_PREFIX):] not in spots:
                spots.append(k[len(ROUTE_PREFIX):])
    rows = [r for r in records if any(k.startswith(ROUTE_PREFIX) for k in r)]
    epochs = [int(r["epoch"]) for r in rows]
    return epochs, {s: [float(r.get(ROUTE_PREFIX + s, float("nan"))) for r in rows] for s in spots}


def _per_class_record(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "sakd_routing.json"
    if path.exists():
        return json.loads(path.read_text())
    summary = run_dir / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text()).get("sakd_routing") or None
    return None


def _class_names(run_dir: Path, count: int) -> list[str]:
    try:
        import yaml

        from ...data import open_dataset

        data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
        names = list(open_dataset(data["name"], root=data.get("root"), **data.get("options", {})).info.class_names)
        if len(names) == count:
            return [str(n) for n in names]
    except Exception:  # names are a nicety: fall back to indices
        pass
    return [str(i) for i in range(count)]


@register_plotter("sakd")
def plot_sakd_run(run_dir: Path, out_dir: Path) -> list[Path]:
    epochs, series = routing_over_epochs(read_epochs(run_dir))
    record = _per_class_record(run_dir)
    if not series and not record:
        return []
    plt = require_matplotlib()
    written: list[Path] = []
    if series:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for spot, values in series.items():
            ax.plot(epochs, values, marker="o" if len(epochs) < 30 else None, label=spot)
        ax.set(title="SAKD: fraction of samples distilled at each spot", xlabel="epoch",
               ylabel="routed to the teacher", ylim=(-0.02, 1.02))
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "sakd_routing.png"
        atomic_savefig(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    if record and record.get("per_class"):
        per_class = record["per_class"]
        spots = record.get("spots") or [str(i) for i in range(len(per_class[0]))]
        names = _class_names(run_dir, len(per_class))
        fig, ax = plt.subplots(figsize=(max(4.8, 1.6 + 0.9 * len(spots)), 1.8 + 0.22 * len(per_class)))
        image = ax.imshow(per_class, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="P(distilled)")
        ax.set_xticks(range(len(spots)), spots, rotation=45, ha="right", fontsize=8)
        if len(names) <= 40:
            ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_title(f"SAKD routing per class\n(test split, routing={record.get('routing', 'policy')})", fontsize=9)
        ax.set_ylabel("class")
        fig.tight_layout()
        path = out_dir / "sakd_routing_per_class.png"
        atomic_savefig(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
