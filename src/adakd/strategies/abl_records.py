"""ABL's records: the per-epoch means of metrics.jsonl and the gamma trace of ``abl_gamma.jsonl``.

One object owns every accumulator that feeds them, and its ``state_dict`` holds all of them, so a
run resumed from a checkpoint in the middle of an epoch reports what the uninterrupted run reports:

    abl_gamma_student/teacher   mean over the epoch's steps of (g1_b, g2_b), per block but the last
    abl_val_loss                mean over the epoch's meta steps of L_val
    abl_hypergradient_abs       mean over the same meta steps of |dL_val/dgamma_teacher|, per block

The trace (one row per ``trace_every`` search steps) is appended to ``abl_gamma.jsonl`` at epoch
ends; ``trace_written`` counts the rows on disk, so rows written after the checkpoint a run resumes
from are dropped (:meth:`SearchRecords.truncate_trace`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

GAMMA_TRACE = "abl_gamma.jsonl"


class SearchRecords:
    """The accumulators of ABL's per-epoch records and its gamma trace (see the module docstring)."""

    def __init__(self, num_gammas: int, trace_every: int, device: torch.device) -> None:
        self.num_gammas, self.trace_every, self.device = num_gammas, trace_every, device
        self.trace: list[tuple[int, Tensor]] = []
        self.trace_written = 0
        self._reset()

    def _reset(self) -> None:
        self.prob_sum = torch.zeros(self.num_gammas, 2, device=self.device)
        self.prob_n = 0
        self.val_sum = torch.zeros((), device=self.device)
        self.hyper_abs_sum = torch.zeros(self.num_gammas, device=self.device)  # |dL_val/dgamma_teacher| per block
        self.meta_n = 0  # meta steps this epoch: the count of val_sum and hyper_abs_sum

    # ------------------------------------------------------------------ adding
    def add_probs(self, probs: Tensor) -> None:
        """The (g1, g2) a training step used."""
        self.prob_sum = self.prob_sum + probs
        self.prob_n += 1

    def add_meta_step(self, val_loss: Tensor, hypergradient: Tensor) -> None:
        """A meta step's validation loss and its hypergradient dL_val/dgamma [L-1, 2]."""
        self.val_sum = self.val_sum + val_loss
        self.hyper_abs_sum = self.hyper_abs_sum + hypergradient[:, 1].abs().float()
        self.meta_n += 1

    def trace_at(self, iteration: int, probs: Callable[[], Tensor]) -> None:
        """Add a trace row of ``probs()`` when ``iteration`` is a multiple of ``trace_every``."""
        if iteration % self.trace_every == 0:
            self.trace_now(iteration, probs())

    def trace_now(self, iteration: int, probs: Tensor) -> None:
        self.trace.append((iteration, probs.clone()))

    # ------------------------------------------------------------------ reading out
    def epoch_metrics(self, run_dir: Any) -> dict[str, Any]:
        """The epoch's means (see the module docstring); writes the trace rows, then starts a new epoch."""
        out: dict[str, Any] = {}
        if self.prob_n:
            mean = (self.prob_sum / self.prob_n).cpu().tolist()
            out["abl_gamma_student"] = [round(m[0], 6) for m in mean]
            out["abl_gamma_teacher"] = [round(m[1], 6) for m in mean]
        if self.meta_n:
            out["abl_val_loss"] = float(self.val_sum.item()) / self.meta_n
            out["abl_hypergradient_abs"] = [float(f"{h:.4g}") for h in (self.hyper_abs_sum / self.meta_n).tolist()]
        self.flush_trace(run_dir)
        self._reset()
        return out

    def flush_trace(self, run_dir: Any) -> None:
        """Append the pending trace rows to ``run_dir/abl_gamma.jsonl`` (counted even where run_dir is None)."""
        if not self.trace:
            return
        rows = torch.stack([p for _, p in self.trace]).cpu().tolist()
        lines = [json.dumps({"phase": "search", "iteration": it, "gamma_student": [r[0] for r in row],
                             "gamma_teacher": [r[1] for r in row]}) for (it, _), row in zip(self.trace, rows)]
        if run_dir is not None:
            with open(Path(run_dir) / GAMMA_TRACE, "a") as f:
                f.write("".join(line + "\n" for line in lines))
        self.trace_written += len(lines)
        self.trace = []

    def truncate_trace(self, run_dir: Any) -> None:
        """Drop trace rows written after the checkpoint (a kill between the flush and the save)."""
        if run_dir is None:
            return
        path = Path(run_dir) / GAMMA_TRACE
        if path.exists():
            lines = path.read_text().splitlines(keepends=True)
            if len(lines) > self.trace_written:
                path.write_text("".join(lines[:self.trace_written]))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "trace": [(it, p.cpu()) for it, p in self.trace],
            "trace_written": self.trace_written,
            "sums": {"prob_sum": self.prob_sum.cpu(), "prob_n": self.prob_n, "val_sum": self.val_sum.cpu(),
                     "val_n": self.meta_n, "hyper_abs_sum": self.hyper_abs_sum.cpu()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """``state`` as :meth:`state_dict` made it (a checkpoint from before ``hyper_abs_sum`` was saved
        resumes with that sum at zero, as it did then)."""
        self.trace = [(int(it), p.to(self.device)) for it, p in state["trace"]]
        self.trace_written = int(state["trace_written"])
        sums = state["sums"]
        self.prob_sum, self.prob_n = sums["prob_sum"].to(self.device), int(sums["prob_n"])
        self.val_sum, self.meta_n = sums["val_sum"].to(self.device), int(sums["val_n"])
        hyper = sums.get("hyper_abs_sum")
        self.hyper_abs_sum = torch.zeros(self.num_gammas, device=self.device) if hyper is None else hyper.to(self.device)


__all__ = ["SearchRecords", "GAMMA_TRACE"]
