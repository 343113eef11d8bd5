"""Seeded, stratified train/val/test splits that do not need scikit-learn."""

import math
from collections.abc import Sequence

import numpy as np


def stratified_split(labels: Sequence[object], fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held_out) row indices: as in scikit-learn, ``ceil(fraction * n)`` rows held out,
    each class its proportional share (largest remainders get the leftover rows), and a class
    of two or more rows keeps one on each side. Drawn from ``seed`` alone, not the global RNG."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = fraction * counts
    take = np.floor(quotas).astype(int)
    leftover = math.ceil(fraction * len(labels)) - take.sum()
    by_remainder = np.argsort(-(quotas - take), kind="stable")
    take[by_remainder[:leftover]] += 1
    if fraction > 0:
        take = np.where(counts >= 2, np.clip(take, 1, counts - 1), take)
    held_out = [rng.permutation(np.flatnonzero(labels == value))[:n]
                for value, n in zip(classes, take, strict=True)]
    held = np.sort(np.concatenate(held_out)) if held_out else np.array([], dtype=int)
    kept = np.setdiff1d(np.arange(len(labels)), held)
    return kept, held
