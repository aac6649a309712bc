"""ABL's plots (``adakd plot RUN_DIR``): the meta variables per block over the search's iterations
(the paper's Fig. 3: student share g1 and teacher share g2) and the test accuracy of every block's
auxiliary head at the end of training (its Fig. 4c / 6)."""
from __future__ import annotations

import json
from pathlib import Path

from ...runtime.atomic import atomic_savefig
from ...strategies.abl import GAMMA_TRACE
from .plots import register_plotter, require_matplotlib


def read_gamma_trace(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / GAMMA_TRACE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _save(fig, path: Path) -> Path:
    return atomic_savefig(fig, path, dpi=120)


@register_plotter("abl")
def plot_abl(run_dir: Path, out_dir: Path) -> list[Path]:
    trace = read_gamma_trace(run_dir)
    summary_path = Path(run_dir) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    accs = summary.get("abl_head_top1") or []
    if not trace and not accs:
        return []
    plt = require_matplotlib()
    written: list[Path] = []
    if trace:
        its = [r["iteration"] for r in trace]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True, layout="constrained")
        for ax, key, title in ((axes[0], "gamma_student", "student error g1 (local CE)"),
                               (axes[1], "gamma_teacher", "teacher error g2 (distillation)")):
            for b in range(len(trace[0][key])):
                ax.plot(its, [r[key][b] for r in trace], label=f"block {b + 1}")
            ax.set_title(title)
            ax.set_xlabel("search iteration")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("softmax(gamma)")
        axes[1].legend(fontsize=7, ncol=2)
        written.append(_save(fig, Path(out_dir) / "abl_gammas.png"))
        plt.close(fig)
    if accs:
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
        blocks = list(range(1, len(accs) + 1))
        ax.plot(blocks, accs, marker="o")
        ax.set_xticks(blocks)
        ax.set_xlabel("block (last = the student's classifier)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title("Accuracy of each block's auxiliary head")
        ax.grid(alpha=0.3)
        written.append(_save(fig, Path(out_dir) / "abl_block_accuracy.png"))
        plt.close(fig)
    return written
