"""The statistics of a results-table column over a row's seeds (tables of :mod:`.table` and :mod:`.adaptive`):

    mean = (1/n) sum_i x_i,   std = sqrt( sum_i (x_i - mean)^2 / (n - 1) )   (sample std; None for n = 1)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable


@dataclass
class Stats:
    n: int
    mean: float
    std: float | None  # sample std (n - 1); None for n = 1

    @classmethod
    def of(cls, values: Iterable[float]) -> "Stats":
        xs = [v for v in values if v is not None and math.isfinite(v)]
        if not xs:
            return cls(0, math.nan, None)
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
        return cls(len(xs), mean, std)
