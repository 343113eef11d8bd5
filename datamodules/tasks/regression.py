"""Task ``regression``: one or more numeric label columns -> float32 values in the table's
units, (N,) for one column and (N, K) for several. The training split's mean and standard
deviation go to the model (``target_mean`` / ``target_std``), which can learn the standardised
target and still answer in the table's units."""

import numpy as np
import pandas as pd

from datamodules.tasks import NoTargets, empty_cells, missing_problems, plain
from datamodules.validation import Problem
from errors import DataError


class Regression(NoTargets):
    def __init__(self, columns: list[str], delimiter: str | None, mask_column: str | None,
                 class_names: list[str] | None) -> None:
        if not columns:
            raise DataError("task: regression needs label_column (use task: none for data "
                            "without targets)")
        self.columns = columns

    def problems(self, table: pd.DataFrame) -> list[Problem]:
        problems = missing_problems(table, self.columns, "target")
        for column in self.columns:
            cells = table[column]
            values = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=float)
            for row in np.flatnonzero(~np.isfinite(values) & ~empty_cells(table, column)):
                value = plain(cells.iloc[row])
                problems.append(Problem(int(row), f"target {column!r} is {value!r}, not a "
                                                  "finite number"))
        return problems

    def values(self, rows: pd.DataFrame, columns: list[str] | None = None) -> np.ndarray:
        """The targets as float32 (rows, columns), as the table holds them."""
        return np.stack([pd.to_numeric(rows[c], errors="coerce").to_numpy(dtype=np.float32)
                         for c in columns or self.columns], axis=1)

    def encode(self, rows: pd.DataFrame, class_names: list[str] | None) -> np.ndarray:
        values = self.values(rows)
        return values[:, 0] if values.shape[1] == 1 else values

    def stats(self, train: pd.DataFrame) -> tuple[list[float], list[float]]:
        """Each target's mean and standard deviation over the training rows (1 where it is 0)."""
        values = self.values(train)
        std = values.std(axis=0)
        return values.mean(axis=0).tolist(), np.where(std > 0, std, 1.0).tolist()

    def strata(self, table: pd.DataFrame, rows_per_bin: int = 10, max_bins: int = 10
               ) -> np.ndarray:
        """Quantile bins of the first target (up to ``max_bins`` of at least ``rows_per_bin``
        rows), so every split spans the target's range."""
        values = self.values(table, self.columns[:1])[:, 0]
        bins = max(1, min(max_bins, len(values) // rows_per_bin))
        if bins == 1:
            return np.zeros(len(values), dtype=int)
        return pd.qcut(pd.Series(values).rank(method="first"), bins, labels=False).to_numpy()
