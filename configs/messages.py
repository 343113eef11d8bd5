"""The one-line messages for what a user can fix (imported when something is wrong, a
--config is given, or a model asks for an optimizer object): which errors train.py ends with
in one line, a jsonargparse error condensed, a config file that is not YAML, a model asking
for an optimizer object, ``self.hparams.optimizer(...)`` under LightningCLI."""

import errno
import inspect
import re
import traceback
from pathlib import Path
from typing import Any

import torch.optim
import yaml
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from configs import config_files_in, fail, instance_hints, loaded_class
from errors import DataError, NonFiniteLossError

# A write the machine refused (disk full, read-only or unwritable folder): the user's to fix.
WRITE_REFUSED = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.ENOTDIR, errno.EISDIR)

_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:",
          "Expected a <class 'NoneType'>", "Expected a path but ")
# "Given value: many" says what was wrong; a dump of the whole nested config does not.
_VALUE_DUMP = re.compile(r"Given value: (Namespace\(|NestedArg\(|.{80})")
_LONG_VALUE = re.compile(r"(Got value: )(.{60}).{20,}")


def data_error_in(error: BaseException | None) -> DataError | None:
    """The DataError ``error`` is or was raised while handling (jsonargparse wraps errors
    raised while building the data or model in a ValueError of its own)."""
    while error is not None and not isinstance(error, DataError):
        error = error.__cause__ or error.__context__
    return error


def one_line_for(error: BaseException) -> tuple[str, int] | None:
    """The line and exit status train.py ends with for an error the user can fix; None for
    anything else (a bug, which keeps its traceback). Status 2 is bad data or options, found
    before the first training step; 1 is a run that could not go on."""
    cause = data_error_in(error) if isinstance(error, ValueError) else None
    if cause is not None:  # bad data or options: the message names the file, row or option
        return str(cause), 2
    if isinstance(error, ValueError) and "Problem with given class_path" in str(error):
        return condense_error(str(error)), 2  # jsonargparse could not build a configured class
    if isinstance(error, MisconfigurationException):  # Lightning refusing --max_epochs -5
        hint = (": without a logger, drop it from trainer.callbacks (configs/default.yaml)"
                if "that has no logger" in str(error) else "")
        return (str(error).rstrip(".") + hint if hint else str(error)), 2
    if isinstance(error, TypeError):  # a module calling self.hparams.optimizer(...)
        line = explain_hparams_call(error)
        return (line, 1) if line else None
    if isinstance(error, OSError) and error.errno in WRITE_REFUSED:
        return f"cannot write {error.filename or 'a file'}: {error.strerror}", 1
    if isinstance(error, NonFiniteLossError):  # the weights never saw the bad step
        return str(error), 1
    if isinstance(error, RuntimeError) and str(error).startswith(_STATE_DICT):
        return weights_do_not_fit(str(error)), 2  # a checkpoint of another model or data
    return None


_STATE_DICT = "Error(s) in loading state_dict for "


def weights_do_not_fit(message: str) -> str:
    """torch's report of a checkpoint's weights that do not fit the model, in one line."""
    model, _, details = message[len(_STATE_DICT):].partition(":")
    first = details.strip().splitlines()[0].strip() if details.strip() else ""
    first = first if len(first) <= 160 else first[:157] + "..."
    return (f"the checkpoint's weights do not fit {model} as configured ({first}): it was "
            "trained with another model or data (classes, channels, sizes); give the config "
            "it was trained with (--config <its run>/config.yaml)")


def check_yaml_syntax(argv: list[str]) -> None:
    """Ends the command with one line naming the ``--config`` file, line and column of a YAML
    syntax error (the parser would name ``<unicode string>``)."""
    for path in config_files_in(argv):
        try:
            yaml.safe_load(Path(path).read_text())
        except OSError:
            continue  # a missing file: the parser says so
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            fail(f"{path}: not valid YAML: {problem}{where}")


def parser_error_line(message: str) -> str:
    """The one line for a jsonargparse error."""
    return instance_hints_in_error(message) or (
        f"{condense_error(message)} (python train.py --help lists the options)")


def condense_error(message: str, max_chars: int = 400) -> str:
    """The lines of a jsonargparse error that say what is wrong, on one line: the keys and
    class paths that lead to the problem (lines ending in ``:``), then the problem itself.

    The problem is never cut. Where the whole line is longer than ``max_chars``, the value
    dumps after ``Got value:`` are cut first, then the keys and class paths between the first
    one and the one right above each problem are left out (``…``).
    """
    parts: list[str] = []
    for line in message.splitlines():
        line = line.strip().removeprefix("- ").strip()
        if (line and not line.startswith(_NOISE) and not _VALUE_DUMP.match(line)
                and line not in parts):
            parts.append(line)
    text = " ".join(parts)
    if len(text) <= max_chars:
        return text
    parts = [part if part.endswith(":") else _LONG_VALUE.sub(r"\1\2…", part) for part in parts]
    text = " ".join(parts)
    if len(text) <= max_chars:
        return text
    # Keep the first context, every problem, and the context right above each problem.
    kept: list[str] = []
    for i, part in enumerate(parts):
        context = part.endswith(":")
        above_problem = context and i + 1 < len(parts) and not parts[i + 1].endswith(":")
        if i == 0 or not context or above_problem:
            kept.append(part)
        elif kept[-1] != "…":
            kept.append("…")
    return " ".join(kept)


def public_name(hint: Any) -> str:
    """``torch.optim.Optimizer`` rather than ``torch.optim.optimizer.Optimizer``."""
    if inspect.ismodule(hint):
        return f"{hint.__name__} (a module)"
    for module in (torch.optim, torch.optim.lr_scheduler):
        if getattr(module, hint.__name__, None) is hint:
            return f"{module.__name__}.{hint.__name__}"
    return f"{hint.__module__}.{hint.__qualname__}"


def instance_hints_message(class_path: str, hints: dict[str, tuple[Any, str]]) -> str:
    asked = " and ".join(f"{name}: {public_name(hint)}" for name, (hint, _) in hints.items())
    use = " and ".join(f"{name}: lightning.pytorch.cli.{suggestion}"
                       for name, (_, suggestion) in hints.items())
    first = next(iter(hints))
    return (f"{class_path} asks for {asked}, which no config can give (an optimizer needs the "
            f"model's parameters, a schedule its optimizer): annotate {use}, keep "
            f"{(them := 'them' if len(hints) > 1 else 'it')} in __init__ (self.{first} = {first}) "
            f"and call {them} in configure_optimizers; see docs/own_module.md")


def instance_hints_in_error(message: str) -> str | None:
    """The one line for a parser error about a parameter whose hint asks for an object (see
    :func:`instance_hints`), for any class the error names; None for other errors."""
    text = condense_error(message, max_chars=10_000)
    for class_path in dict.fromkeys(re.findall(r"class_path '([\w.]+)'", message)):
        if class_path.startswith(("torch.", "lightning.")):
            continue  # a schedule's own __init__ does take an optimizer object
        hints = instance_hints(loaded_class(class_path))
        if any(re.search(rf"\b{re.escape(name)}\b", text) for name in hints):
            return instance_hints_message(class_path, hints)
    return None


def explain_hparams_call(error: BaseException) -> str | None:
    """One line for ``TypeError: 'dict' object is not callable`` raised where a module's
    ``configure_optimizers`` calls ``self.hparams.<name>(...)``, else None.

    Under LightningCLI, ``save_hyperparameters()`` records the config it was given (so that
    checkpoints reload without pickled objects): ``self.hparams.optimizer`` is that config, a
    dict, and the callable the module was built with is only the ``__init__`` argument.
    """
    if not isinstance(error, TypeError) or "object is not callable" not in str(error):
        return None
    frames = traceback.extract_tb(error.__traceback__)
    if not frames or frames[-1].name != "configure_optimizers":
        return None
    called = re.search(r"self\.hparams\.(\w+)\s*\(|self\.hparams\[['\"](\w+)['\"]\]\s*\(",
                       frames[-1].line or "")
    if called is None:
        return None
    name = called.group(1) or called.group(2)
    return (f"configure_optimizers ({frames[-1].filename}:{frames[-1].lineno}) calls "
            f"self.hparams.{name}, which under LightningCLI is its config (a dict), not the "
            f"callable: keep the argument in __init__ (self.{name} = {name}) and call "
            f"self.{name}(...); see docs/own_module.md")
