"""What the rows are for: one class per task reads the table's target columns, says what is
wrong with them, encodes them for the model (each task's file says in what form) and groups rows
for a stratified split. Each task is the class of its own file (``multiclass.py`` holds
``Multiclass``), imported by its task only; this file holds task ``none``, their base."""

import importlib
import typing
from typing import Any, Literal

import numpy as np
import pandas as pd

from datamodules.validation import Problem
from errors import DataError

Task = Literal["multiclass", "multilabel", "regression", "segmentation", "none"]


def task_targets(task: str, label_column: str | list[str] | None, label_delimiter: str | None,
                 mask_column: str | None, class_names: list[str] | None) -> "NoTargets":
    """The targets of ``task``, after checking that the options express it."""
    if task not in typing.get_args(Task):
        raise DataError(f"task: {task!r} is not one of {', '.join(typing.get_args(Task))}")
    if task == "none":
        return NoTargets()
    columns = [label_column] if isinstance(label_column, str) else list(label_column or [])
    target_class = getattr(importlib.import_module(f"{__name__}.{task}"), task.capitalize())
    return target_class(columns, label_delimiter, mask_column, class_names)


class NoTargets:
    """Task ``none``: no target columns, no classes; the rows are split without strata."""

    columns: list[str] = []  # the label columns the task reads
    has_classes = False      # whether the model's outputs are named classes (or labels)
    labels_in_rows = False   # whether the rows name them (row_labels), so they can be learned

    def default_class_names(self) -> list[str] | None:
        """The classes known before the table is read (None: learned from the training split)."""
        return None

    def problems(self, table: pd.DataFrame) -> list[Problem]:
        """What is wrong with each row whose targets the task cannot read."""
        return []

    def check_table(self, source: str, table: pd.DataFrame, names_given: bool) -> None:
        """Refuse, in one line, a whole table that does not look like this task's."""

    def row_labels(self, rows: pd.DataFrame) -> list[list[str]]:
        """Each row's class names (tasks with ``labels_in_rows``)."""
        raise NotImplementedError

    def encode(self, rows: pd.DataFrame, class_names: list[str] | None) -> np.ndarray | None:
        """The rows' targets in the model's form; None where the items carry no targets."""
        return None

    def strata(self, table: pd.DataFrame) -> np.ndarray:
        """The group each row is stratified by in splits and folds."""
        return np.zeros(len(table), dtype=int)


def empty_cells(table: pd.DataFrame, column: str) -> np.ndarray:
    cells = table[column]
    return (cells.isna() | (cells.astype(str).str.strip() == "")).to_numpy()


def missing_problems(table: pd.DataFrame, columns: list[str], what: str) -> list[Problem]:
    """A row without a label (``what``: label or target) in one of ``columns``."""
    return [Problem(int(row), f"no {what} in column {column!r}")
            for column in columns for row in np.flatnonzero(empty_cells(table, column))]


def label_key(value: object) -> str:
    """Labels compare as strings so 3, "3" and 3.0 read from different files agree, and
    without surrounding spaces ("cat " is "cat")."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def sorted_names(keys: set[str]) -> list[str]:
    """Sorted class names; integer-like names sort numerically (2 before 10)."""
    names = sorted(keys)
    if all(k.lstrip("-").isdigit() for k in names):
        names.sort(key=int)
    return names


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds, for messages (2, not np.int64(2))."""
    return value.item() if isinstance(value, np.generic) else value
