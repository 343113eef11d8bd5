"""Task ``multiclass``: one label column of classes (ints or strings) -> an int64 class index.
The default task, so it refuses a column holding a continuous quantity: never a regression
table trained silently as hundreds of classes."""

import numpy as np
import pandas as pd

from datamodules.tasks import NoTargets, label_key, missing_problems, plain
from datamodules.validation import Problem
from errors import DataError

# More distinct labels than this share of the rows (of at least MIN_ROWS_FOR_CLASS_CHECK) is a
# continuous target.
MAX_CLASS_SHARE = 0.5
MIN_ROWS_FOR_CLASS_CHECK = 20
# More distinct integers than this that are not class ids (from 0 or 1, covering at least half
# the range up to the largest) are a quantity: prices in $k, ages, years, counts with gaps.
MAX_INTEGERS_NOT_IDS = 20


class Multiclass(NoTargets):
    has_classes = True
    labels_in_rows = True

    def __init__(self, columns: list[str], delimiter: str | None, mask_column: str | None,
                 class_names: list[str] | None) -> None:
        if not columns:
            raise DataError("task: multiclass needs label_column (use task: none for data "
                            "without targets)")
        if len(columns) > 1:
            raise DataError(f"task: multiclass takes one label_column, got {columns}: a list of "
                            "0/1 columns is task: multilabel, of numbers task: regression")
        self.columns = columns

    def problems(self, table: pd.DataFrame) -> list[Problem]:
        return missing_problems(table, self.columns, "label")

    def check_table(self, source: str, table: pd.DataFrame, names_given: bool) -> None:
        """Fractional numbers, many integers that are not class ids, or nearly one class per
        row, are refused (unless ``class_names`` are given)."""
        if names_given:
            return
        labels = table[self.columns[0]]
        numbers = pd.to_numeric(labels, errors="coerce")
        if numbers.notna().all():
            fractional = numbers[(numbers % 1) != 0]
            if len(fractional):
                raise DataError(f"{source}: label column {labels.name!r} holds non-integer "
                                f"numbers (e.g. {plain(fractional.iloc[0])!r}); for a "
                                "continuous target set task: regression")
            values = np.unique(numbers.to_numpy(dtype=np.int64))
            ids = values[0] in (0, 1) and 2 * len(values) >= values[-1] - values[0] + 1
            if len(values) > MAX_INTEGERS_NOT_IDS and not ids:
                raise DataError(f"{source}: label column {labels.name!r} holds {len(values)} "
                                f"different integers from {values[0]} to {values[-1]}, not "
                                "class ids counted from 0 or 1; for a quantity (a price, an "
                                "age, a count) set task: regression, for classes give "
                                "class_names")
        distinct = labels.map(label_key).nunique()
        if len(labels) >= MIN_ROWS_FOR_CLASS_CHECK and distinct > MAX_CLASS_SHARE * len(labels):
            raise DataError(f"{source}: label column {labels.name!r} has {distinct} classes in "
                            f"{len(labels)} rows, nearly one per row; for a continuous target "
                            "set task: regression (or give class_names to keep them as classes)")

    def row_labels(self, rows: pd.DataFrame) -> list[list[str]]:
        return [[label_key(v)] for v in rows[self.columns[0]]]

    def encode(self, rows: pd.DataFrame, class_names: list[str] | None) -> np.ndarray:
        index = {name: i for i, name in enumerate(class_names or [])}
        return np.array([index[label_key(v)] for v in rows[self.columns[0]]], dtype=np.int64)

    def strata(self, table: pd.DataFrame) -> np.ndarray:
        return table[self.columns[0]].map(label_key).to_numpy()
