"""Rows a table datamodule cannot train on as they are: invalid rows (refused in one error, whose
message is written here, or dropped with ``skip_invalid``) and rows listing an input an earlier
row lists. Imported only when a table has such rows."""

import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd

from datamodules.validation import DataValidationError, Problem

log = logging.getLogger(__name__)
SHOWN_PROBLEMS = 10


def first_problems(messages: Sequence[str]) -> list[str]:
    """The first SHOWN_PROBLEMS messages, indented, and how many more there are."""
    lines = [f"  {m}" for m in messages[:SHOWN_PROBLEMS]]
    if len(messages) > SHOWN_PROBLEMS:
        lines.append(f"  ... and {len(messages) - SHOWN_PROBLEMS} more")
    return lines


def problems_message(source: str, problems: list[Problem], hint: str) -> str:
    """:class:`DataValidationError`'s message: one line for one problem, else the first problems
    with their rows, and the count."""
    suffix = f" ({hint})" if hint else ""
    if len(problems) == 1:
        return f"{source}: 1 invalid row: row {problems[0].row}: {problems[0].message}{suffix}"
    lines = first_problems([f"row {p.row}: {p.message}" for p in problems])
    return "\n".join([f"{source}: {len(problems)} invalid row(s){suffix}", *lines])


def without_bad_rows(data: Any, table: pd.DataFrame, problems: list[Problem]) -> pd.DataFrame:
    """``table`` of ``data`` (a TableDataModule) without its invalid rows (``problems``, and
    repeats that contradict an earlier row) and with each repeated input once."""
    problems = sorted(problems + repeat_problems(data, table), key=lambda p: p.row)
    if problems:
        if not data.skip_invalid:
            raise DataValidationError(data.source, problems,
                                      hint="fix them or set skip_invalid: true to drop them")
        bad_rows = sorted({p.row for p in problems})
        log.warning("%s: skip_invalid dropped %d of %d rows (first: %s)", data.source,
                    len(bad_rows), len(table), problems[0].message)
        table = table.drop(index=bad_rows).reset_index(drop=True)
        if table.empty:
            raise DataValidationError(data.source, problems, hint="every row is invalid")
    return without_repeats(data, table)


def repeats(data: Any, table: pd.DataFrame) -> list[tuple[int, int]]:
    """(row, the earlier row it repeats) for each row whose input an earlier row lists."""
    if data.input_column is None:
        return []
    first: dict[str, int] = {}
    pairs = []
    for row, key in enumerate(table[data.input_column].astype(str)):
        if key in first:
            pairs.append((row, first[key]))
        else:
            first[key] = row
    return pairs


def repeat_problems(data: Any, table: pd.DataFrame) -> list[Problem]:
    """A repeated input with another target, or in another split of ``split_column``: the
    same image would be learned two ways, or tested on after training on it."""
    targets = [c for c in (*data.label_columns, data.mask_column) if c]
    split = data.split_column
    problems = []
    for row, earlier in repeats(data, table):
        mine, theirs = table.iloc[row], table.iloc[earlier]
        key = mine[data.input_column]
        if [str(mine[c]) for c in targets] != [str(theirs[c]) for c in targets]:
            # Both rows: which of the two targets is right is not ours to guess.
            problems += [Problem(r, f"{key!r} is listed in rows {earlier} and {row} with "
                                    "different targets") for r in (earlier, row)]
        elif split and str(mine[split]) != str(theirs[split]):
            problems.append(Problem(row, f"{key!r} is also row {earlier}, in split "
                                         f"{theirs[split]!r}"))
    return problems


def without_repeats(data: Any, table: pd.DataFrame) -> pd.DataFrame:
    """Rows repeating an earlier row's input and target: kept once, said in one line (a
    random split could put the copies in train and test)."""
    pairs = repeats(data, table)
    if not pairs:
        return table
    row, earlier = pairs[0]
    log.warning("%s: %d rows repeat an earlier row's %s and target (first: row %d repeats "
                "row %d, %r); each is kept once", data.source, len(pairs), data.input_column,
                row, earlier, table.iloc[row][data.input_column])
    return table.drop(index=[row for row, _ in pairs]).reset_index(drop=True)
