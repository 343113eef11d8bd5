"""The errors train.py reports in one line, without a traceback (imports nothing)."""


class DataError(ValueError):
    """Bad data or options, found before the first step: the message names the file, row,
    option or class to fix; train.py exits with status 2."""


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or infinite; train.py exits with status 1."""
