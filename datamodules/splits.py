"""Seeded, stratified train/val/test splits that do not need scikit-learn."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def stratified_split(
    labels: Sequence[object], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (kept, held_out) row indices with ``fraction`` of the rows held out per class.

    As in scikit-learn, ``ceil(fraction * n)`` rows are held out in total; each class gets its
    proportional share (largest remainders get the leftover rows), and every class with two or
    more rows keeps at least one row on each side. The draw depends only on ``seed``, never on
    the global RNG, so the test set stays the same whatever training seed is used.
    """
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

    held_out = []
    for value, n in zip(classes, take, strict=True):
        rows = np.flatnonzero(labels == value)
        held_out.append(rng.permutation(rows)[:n])
    held = np.sort(np.concatenate(held_out)) if held_out else np.array([], dtype=int)
    kept = np.setdiff1d(np.arange(len(labels)), held)
    return kept, held


def stratified_folds(labels: Sequence[object], folds: int, seed: int) -> np.ndarray:
    """The fold (0 .. folds-1) of each row, for k-fold cross-validation.

    Each class's rows are shuffled (from ``seed`` alone), the classes are laid end to end and
    the rows dealt out to the folds in turn. So every fold holds each class's rows to within
    one, and the folds' sizes differ by at most one row, which scikit-learn's
    ``StratifiedKFold`` does not promise. Raises ``ValueError`` when a class has fewer rows
    than folds (a fold would have none of it to validate on).
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if len(counts) and counts.min() < folds:
        smallest = classes[counts.argmin()]
        smallest = smallest.item() if isinstance(smallest, np.generic) else smallest
        raise ValueError(f"{folds} folds, but class {smallest!r} has only {counts.min()} rows "
                         "to spread over them")
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == value))
                            for value in classes]) if len(classes) else np.array([], dtype=int)
    assignment = np.empty(len(labels), dtype=int)
    assignment[order] = np.arange(len(order)) % folds
    return assignment
