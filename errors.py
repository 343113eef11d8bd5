"""The errors every layer raises and train.py reports in one line, without a traceback.

At the bottom of the project: datamodules, models and callbacks import it; it imports nothing.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data or options, found before the first training step. The message names the
    file, row, option or class to fix; train.py prints it as one line and exits with status 2."""


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or infinite; the message names the step. train.py prints it
    and exits with status 1 (the weights never saw that step)."""


def data_error_in(error: BaseException | None) -> DataError | None:
    """The DataError that ``error`` is, or was raised while handling (jsonargparse wraps an
    error raised while building the data or the model in a ValueError of its own)."""
    while error is not None and not isinstance(error, DataError):
        error = error.__cause__ or error.__context__
    return error
