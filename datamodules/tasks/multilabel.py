"""Task ``multilabel``: any number of labels per row, from a list of 0/1 label columns or one
column of names joined by ``label_delimiter`` (``"cat;dog"``) -> a float32 multi-hot row."""

import numpy as np
import pandas as pd

from datamodules.tasks import NoTargets, empty_cells, missing_problems, plain
from datamodules.validation import Problem
from errors import DataError


class Multilabel(NoTargets):
    has_classes = True
    labels_in_rows = True

    def __init__(self, columns: list[str], delimiter: str | None, mask_column: str | None,
                 class_names: list[str] | None) -> None:
        if not columns:
            raise DataError("task: multilabel needs label_column (use task: none for data "
                            "without targets)")
        if len(columns) == 1 and delimiter is None:
            raise DataError("task: multilabel with one label_column needs label_delimiter (e.g. "
                            "';' for 'cat;dog'), or give label_column a list of 0/1 columns")
        if len(columns) > 1 and delimiter is not None:
            raise DataError("task: multilabel: label_delimiter reads one column of names; with a "
                            "list of 0/1 columns leave it unset")
        self.columns, self.delimiter = columns, delimiter

    def default_class_names(self) -> list[str] | None:
        return list(self.columns) if self.delimiter is None else None  # one 0/1 column a label

    def problems(self, table: pd.DataFrame) -> list[Problem]:
        if self.delimiter is not None:
            return []  # an empty cell there is a row without labels
        problems = missing_problems(table, self.columns, "label")
        for column in self.columns:
            cells = table[column]
            values = pd.to_numeric(cells, errors="coerce").to_numpy()
            for row in np.flatnonzero(~np.isin(values, [0, 1]) & ~empty_cells(table, column)):
                problems.append(Problem(int(row), f"label column {column!r} is "
                                                  f"{plain(cells.iloc[row])!r}, not 0 or 1"))
        return problems

    def check_table(self, source: str, table: pd.DataFrame, names_given: bool) -> None:
        """A ``label_delimiter`` in no row, where the cells hold another usual one, is refused:
        each combination of names would become one label."""
        if self.delimiter is None:
            return
        cells = table[self.columns[0]].dropna().astype(str)
        if cells.str.contains(self.delimiter, regex=False).any():
            return
        for other in (",", ";", "|"):
            holding = cells[cells.str.contains(other, regex=False)]
            if other != self.delimiter and len(holding):
                raise DataError(f"{source}: label_delimiter {self.delimiter!r} is in no row of "
                                f"column {self.columns[0]!r}, whose cells hold {other!r} (e.g. "
                                f"{holding.iloc[0]!r}); set label_delimiter: {other!r}")

    def row_labels(self, rows: pd.DataFrame) -> list[list[str]]:
        """The labels whose 0/1 column is 1, or the delimited names."""
        if self.delimiter is None:
            hot = rows[self.columns].to_numpy(dtype=float) == 1
            return [[c for c, on in zip(self.columns, row, strict=True) if on] for row in hot]
        return [[n.strip() for n in str(v).split(self.delimiter) if n.strip()]
                if isinstance(v, str) else [] for v in rows[self.columns[0]]]

    def encode(self, rows: pd.DataFrame, class_names: list[str] | None) -> np.ndarray:
        index = {name: i for i, name in enumerate(class_names or [])}
        hot = np.zeros((len(rows), len(index)), dtype=np.float32)
        for row, names in enumerate(self.row_labels(rows)):
            hot[row, [index[n] for n in names]] = 1.0
        return hot

    def strata(self, table: pd.DataFrame) -> np.ndarray:
        """Each row's rarest label, so rare labels reach every split."""
        rows = self.row_labels(table)
        counts: dict[str, int] = {}
        for names in rows:
            for name in names:
                counts[name] = counts.get(name, 0) + 1
        return np.array([min(names, key=lambda n: (counts[n], n)) if names else ""
                         for names in rows], dtype=object)
