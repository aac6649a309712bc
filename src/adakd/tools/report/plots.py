"""``adakd plot RUN_DIR``: every plot that applies to a run, written into RUN_DIR/plots/.

Each method module registers a plotter ``fn(run_dir: Path, out_dir: Path) -> list[Path]`` with
:func:`register_plotter`; a plotter returns [] when its run kind does not apply (e.g. the SAKD
routing plot on a standard run). matplotlib is an optional extra (``pip install adakd[plot]``).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from ...errors import AdakdError
from ...registry import PLOTTERS

Plotter = Callable[[Path, Path], list[Path]]

#: Modules whose import registers plotters.
_PLOTTER_MODULES = ["curves", "aekt_plots", "sakd_plots", "abl_plots", "analysis_plots"]


def register_plotter(name: str) -> Callable[[Plotter], Plotter]:
    """Decorator: ``fn(run_dir, out_dir) -> [paths]`` becomes one of ``adakd plot``'s plotters (a plugin may add its own)."""
    return PLOTTERS.register(name)


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise AdakdError("plots need matplotlib: pip install 'adakd[plot]'") from None
    return plt


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").exists():
        raise AdakdError(f"{run_dir} is not a run directory (no metrics.jsonl); point at runs/<name>.")
    out = Path(out_dir) if out_dir else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    for module in _PLOTTER_MODULES:
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{module}":
                raise
    written: list[Path] = []
    for entry in PLOTTERS.entries():
        written.extend(entry.factory(run_dir, out))
    return written
