"""Task ``multiclass``: one label column of classes (ints or strings) -> an int64 class index.
The default task, so it refuses a column holding a continuous quantity: never a regression
table trained silently as hundreds of classes."""

import numpy as np
import pandas as pd

from datamodules.tasks import NoTargets, label_key, missing_problems
from datamodules.validation import Problem
from errors import DataError


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
        """A column of quantities is refused, unless ``class_names`` are given."""
        if not names_given:
            from datamodules.tasks.continuous_labels import refuse_continuous_labels

            refuse_continuous_labels(source, table[self.columns[0]])

    def row_labels(self, rows: pd.DataFrame) -> list[list[str]]:
        return [[label_key(v)] for v in rows[self.columns[0]]]

    def encode(self, rows: pd.DataFrame, class_names: list[str] | None) -> np.ndarray:
        index = {name: i for i, name in enumerate(class_names or [])}
        return np.array([index[label_key(v)] for v in rows[self.columns[0]]], dtype=np.int64)

    def strata(self, table: pd.DataFrame) -> np.ndarray:
        return table[self.columns[0]].map(label_key).to_numpy()
