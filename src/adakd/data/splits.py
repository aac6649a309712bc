"""Deterministic, class-aware index selection: a stratified train/val split and class-balanced subsets.

Both use NumPy's PCG64 seeded from ``(seed, purpose)``, so they depend only on the labels and
the seed (never on the run's training seed) and never look at the test split.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError

_VAL, _SUBSET = 0x5A1, 0x5B5


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` that sum to ``total`` (Hamilton's method)."""
    exact = total * weights / weights.sum()
    out = np.floor(exact).astype(np.int64)
    rest = total - int(out.sum())
    if rest > 0:
        order = np.lexsort((np.arange(len(exact)), -(exact - out)))  # biggest remainder first, ties by class
        out[order[:rest]] += 1
    return out


def train_val_split(n: int, val_fraction: float, seed: int, labels: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices of ``range(n)``; ``round(val_fraction * n)`` go to val.

    Stratified when ``labels`` are given: each class gives to val in proportion to its size
    (largest-remainder rounding), chosen at random within the class.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1).")
    n_val = int(round(val_fraction * n))
    if n_val == 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, _VAL])
    if labels is None:
        val = rng.permutation(n)[:n_val]
    else:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ConfigError(f"train_val_split: {labels.shape[0]} labels for {n} samples.")
        classes, counts = np.unique(labels, return_counts=True)
        quota = _largest_remainder(n_val, counts.astype(np.float64))
        val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)])
    mask = np.zeros(n, dtype=bool)
    mask[val] = True
    return np.flatnonzero(~mask).astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def balanced_quota(counts: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """How many of each class to take so that ``total`` are taken as evenly as the class sizes allow."""
    quota = np.zeros_like(counts)
    remaining = total
    while remaining > 0:
        open_classes = np.flatnonzero(quota < counts)
        share = remaining // len(open_classes)
        if share == 0:  # fewer left than classes: one more each for a random few
            quota[rng.choice(open_classes, size=remaining, replace=False)] += 1
            break
        give = np.minimum(counts[open_classes] - quota[open_classes], share)
        quota[open_classes] += give
        remaining -= int(give.sum())
    return quota


def balanced_subset(labels: np.ndarray, size: int | float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced subset of ``labels``: ``size`` samples (int) or that
    fraction of them (float in (0, 1]); as equal a number per class as the class sizes allow."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    if isinstance(size, float):
        if not 0.0 < size <= 1.0:
            raise ConfigError(f"train_subset={size}: a fraction must be in (0, 1].")
        size = max(1, int(round(size * n)))
    if size > n:
        raise ConfigError(f"train_subset={size} is larger than the {n} training samples; "
                          "lower it or give a fraction.")
    if size == n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([seed, _SUBSET])
    classes, counts = np.unique(labels, return_counts=True)
    quota = balanced_quota(counts, size, rng)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picks)).astype(np.int64)
