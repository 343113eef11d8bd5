"""k-fold cross-validation of a table datamodule: its ``folds`` / ``fold`` arguments
(``sweep.py --folds K`` sets them). Imported only by a run with ``folds``.

The rows outside the test split are dealt into ``folds`` folds by the same strata as the split
(seeded by ``split_seed``); fold number ``fold`` validates, the others train. The test split is
the one a run without folds has, so every fold is scored on the same test set.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from datamodules.tasks import plain
from errors import DataError


def fold_split(data: Any, table: pd.DataFrame, fixed: dict[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
    """The rows of each split of ``data`` (a TableDataModule) for its fold ``data.fold``, from
    ``fixed``, its split without folds."""
    rest, folds = fold_assignment(data, table, fixed)
    return {"train": rest[folds != data.fold], "val": rest[folds == data.fold],
            "test": fixed["test"]}


def fold_assignment(data: Any, table: pd.DataFrame, fixed: dict[str, np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The rows outside the test split, and the fold of each (from ``split_seed``)."""
    if not 0 <= data.fold < data.folds:
        raise DataError(f"fold {data.fold} does not exist: folds are 0 to {data.folds - 1}")
    rest = np.sort(np.concatenate([fixed["train"], fixed["val"]]))
    labels = data.task_targets.strata(table)[rest]
    try:
        return rest, stratified_folds(labels, data.folds, data.split_seed + 1)
    except ValueError as error:
        raise DataError(f"{data.source}: {error} outside the test split") from None


def fold_table(data: Any) -> pd.DataFrame:
    """Where each row of ``data``'s checked table goes (``row``, its input where rows name one
    (an image path), its ``stratum``, ``part``: ``test`` or the number of the fold it validates
    in); sweep.py saves it."""
    table, _ = data.table_and_splits()
    rest, folds = fold_assignment(data, table, data.fixed_split_rows(table))
    part = np.full(len(table), "test", dtype=object)
    part[rest] = [str(f) for f in folds]
    columns = {"row": np.arange(len(table))}
    if data.input_column is not None:
        columns[data.input_column] = table[data.input_column].to_numpy()
    return pd.DataFrame({**columns, "stratum": data.task_targets.strata(table), "part": part})


def stratified_folds(labels: Sequence[object], folds: int, seed: int) -> np.ndarray:
    """The fold (0 .. folds-1) of each row: each class's rows shuffled (from ``seed`` alone),
    the classes laid end to end and the rows dealt out to the folds in turn, so every fold
    holds each class's rows to within one and the folds' sizes differ by at most one row
    (scikit-learn's ``StratifiedKFold`` does not promise that). ``ValueError`` where a class
    has fewer rows than folds."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if len(counts) and counts.min() < folds:
        raise ValueError(f"{folds} folds, but class {plain(classes[counts.argmin()])!r} has "
                         f"only {counts.min()} rows to spread over them")
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == value))
                            for value in classes]) if len(classes) else np.array([], dtype=int)
    assignment = np.empty(len(labels), dtype=int)
    assignment[order] = np.arange(len(order)) % folds
    return assignment
