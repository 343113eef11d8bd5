"""Seeded, stratified train/val/test splits that do not need scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_split(
    labels: Sequence[object], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (kept, held_out) row indices with ``fraction`` of every class held out.

    Each class contributes ``round(fraction * count)`` rows (at least one when the class has
    two or more rows and ``fraction > 0``), so rare classes appear on both sides. The draw
    depends only on ``seed``, never on the global RNG: the test set stays the same whatever
    training seed is used.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held_out: list[np.ndarray] = []
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        rng.shuffle(rows)
        n = round(fraction * len(rows))
        if fraction > 0 and len(rows) >= 2:
            n = min(max(n, 1), len(rows) - 1)
        held_out.append(rows[:n])
    held = np.sort(np.concatenate(held_out)) if held_out else np.array([], dtype=int)
    kept = np.setdiff1d(np.arange(len(labels)), held)
    return kept, held
