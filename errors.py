"""The errors train.py reports in one line, without a traceback (imports nothing)."""


class DataError(ValueError):
    """Bad data or options, found before the first step: the message names the file, row,
    option or class to fix; train.py exits with status 2."""


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or infinite; train.py exits with status 1."""


def data_error_in(error: BaseException | None) -> DataError | None:
    """The DataError ``error`` is or was raised while handling (jsonargparse wraps errors
    raised while building the data or model in a ValueError of its own)."""
    while error is not None and not isinstance(error, DataError):
        error = error.__cause__ or error.__context__
    return error
