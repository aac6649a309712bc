"""What the adaptive strategies decided, per row of a results table (seeds pooled).

* ABL: the teacher share g2_b of every block b < L-1 that the run trained with (searched, fixed or
  given; ``abl_gammas`` of ``summary.json``), and the test top-1 of every block's auxiliary head
  (``abl_head_top1``, the last entry being the student's classifier). The ABL paper's finding to
  compare with: the teacher share is higher in shallow blocks (its Fig. 3).
* SAKD: the fraction of test samples the policy routes to the teacher at each spot
  (``sakd_routing.overall``: P(a = 1) averaged over the test split).

Each cell is mean ± sample std over the row's seeds (as the main table).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from .stats import Stats

if TYPE_CHECKING:
    from .table import Row


def _columns(vectors: Sequence[Sequence[float]]) -> list[Stats]:
    """Per-position statistics of equally long vectors (the shortest length wins)."""
    width = min(len(v) for v in vectors)
    return [Stats.of(float(v[i]) for v in vectors) for i in range(width)]


def _cell(s: Stats, digits: int) -> str:
    return f"{s.mean:.{digits}f}" + (f" ± {s.std:.{digits}f}" if s.std is not None else "")


def _label(row: Row) -> str:
    return f"{row.method} / {row.strategy}" + (f" ({row.teacher} → {row.student})" if row.teacher else "")


def abl_lines(rows: Sequence[Row]) -> list[str]:
    lines = []
    for row in rows:
        summaries = [r.stored.summary for r in row.runs]
        gammas = [[g[1] for g in s["abl_gammas"]] for s in summaries if s.get("abl_gammas")]
        heads = [s["abl_head_top1"] for s in summaries if s.get("abl_head_top1")]
        if not gammas:
            continue
        sources = sorted({str(s.get("abl_gamma_source")) for s in summaries if s.get("abl_gammas")})
        share = ", ".join(_cell(s, 3) for s in _columns(gammas))
        acc = ", ".join(_cell(s, 2) for s in _columns(heads)) if heads else "-"
        lines.append(f"| {_label(row)} | {len(gammas)} | {'/'.join(sources)} | {share} | {acc} |")
    if not lines:
        return []
    return ["## ABL: teacher share per block", "",
            "g2_b = softmax(gamma_b)[1], the weight of the teacher's error in block b (shallow first; the last "
            "block has no gamma). Head top-1: test top-1 of each block's auxiliary head, then the student's "
            "classifier.", "",
            "| row | n | gamma source | teacher share g2 per block | head top-1 per block (%) |",
            "|---|---|---|---|---|", *lines, ""]


def sakd_lines(rows: Sequence[Row]) -> list[str]:
    lines = []
    for row in rows:
        summaries = [r.stored.summary for r in row.runs]
        routed = [s["sakd_routing"]["overall"] for s in summaries
                  if isinstance(s.get("sakd_routing"), dict) and s["sakd_routing"].get("overall")]
        if not routed:
            continue
        spots = next((s.get("sakd_spots") for s in summaries if s.get("sakd_spots")), None) or []
        stats = _columns(routed)
        cells = ", ".join(f"{name} {_cell(s, 2)}" for name, s in zip(spots or range(len(stats)), stats))
        lines.append(f"| {_label(row)} | {len(routed)} | {cells} |")
    if not lines:
        return []
    return ["## SAKD: where the policy distils", "",
            "Fraction of test samples routed to the teacher at each spot at the end of training "
            "(P(a = 1) of the policy, averaged over the test split).", "",
            "| row | n | routed fraction per spot |", "|---|---|---|", *lines, ""]


def adaptive_sections(rows: Sequence[Row]) -> str:
    """Markdown sections for the ABL and SAKD rows of a table ('' when there are none)."""
    lines = abl_lines(rows) + sakd_lines(rows)
    return ("\n" + "\n".join(lines)) if lines else ""
