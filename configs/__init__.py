"""How train.py reads the command line: which of these YAML files load first, short options, and
errors in one line (their messages: configs.messages, imported only on an error).

``default.yaml`` (what every run does) always loads first; ``digits.yaml`` (the default data,
model and their settings) only when the command does not choose its own data, so switching
``data.class_path`` never inherits the digits' batch size, caching or transforms (jsonargparse
keeps the init_args a new class_path shares with the old one).
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

FOLDER = Path(__file__).resolve().parent
DEFAULT_CONFIG = FOLDER / "default.yaml"
DIGITS_CONFIG = FOLDER / "digits.yaml"
PREDICT_CONFIG = FOLDER / "predict.yaml"


def default_config_files(argv: list[str], stage: str) -> list[str]:
    """``default.yaml``; ``digits.yaml`` unless ``argv`` chooses its own data; ``predict.yaml``
    (the predictions writer) for ``predict``."""
    data = [] if chooses_data(argv) else [str(DIGITS_CONFIG)]
    return [str(DEFAULT_CONFIG), *data, *([str(PREDICT_CONFIG)] if stage == "predict" else [])]


def chooses_data(argv: list[str]) -> bool:
    """True for ``--data CLASS`` (``--data=CLASS``, ``--data.class_path CLASS``) or a
    ``--config`` file whose ``data`` names a class or is null (``--data.init_args.x``, or a
    ``data:`` with only ``init_args``, changes the data already chosen)."""
    if any(token.partition("=")[0] in ("--data", "--data.class_path") for token in argv):
        return True
    for path in config_files_in(argv):
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
            data = config.get("data", {})
            if data is None or isinstance(data, str) or "class_path" in data:
                return True
        except (OSError, yaml.YAMLError, TypeError, AttributeError):
            continue  # the parser reports a missing or broken file itself
    return False


def config_files_in(argv: list[str]) -> list[str]:
    """The files ``--config`` / ``-c`` name in ``argv``."""
    files = []
    for i, token in enumerate(argv):
        name, eq, value = token.partition("=")
        if name in ("--config", "-c"):
            files.append(value if eq else (argv[i + 1] if i + 1 < len(argv) else ""))
    return files


def yaml_syntax_error(argv: list[str]) -> str | None:
    """One line naming the ``--config`` file, line and column of a YAML syntax error (the
    parser would name ``<unicode string>``), or None."""
    for path in config_files_in(argv):
        try:
            yaml.safe_load(Path(path).read_text())
        except OSError:
            continue  # a missing file: the parser says so
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            return f"{path}: not valid YAML: {problem}{where}"
    return None


# Short options for what people change most, rewritten to the full key before parsing: true
# synonyms, so --print_config, the saved config and configs all see only the full key
# (jsonargparse links would instead forbid setting trainer.devices in a config).
ALIASES = {
    "--devices": "--trainer.devices",
    "--num_nodes": "--trainer.num_nodes",
    "--max_epochs": "--trainer.max_epochs",
    "--max_steps": "--trainer.max_steps",
    "--precision": "--trainer.precision",
    "--accelerator": "--trainer.accelerator",
    "--strategy": "--trainer.strategy",
    "--fast_dev_run": "--trainer.fast_dev_run",
    "--seed": "--seed_everything",
}
ALIAS_HELP = "Short options: " + ", ".join(f"{a} = {t}" for a, t in ALIASES.items()) + "."


def expand_aliases(argv: list[str]) -> list[str]:
    """``--devices 2`` / ``--devices=2`` -> ``--trainer.devices ...``; other tokens untouched."""
    expanded = []
    for token in argv:
        name, sep, value = token.partition("=")
        expanded.append(ALIASES[name] + sep + value if name in ALIASES else token)
    return expanded


DEBUG_VARIABLE = "JSONARGPARSE_DEBUG"


def debug_report_requested() -> bool:
    """True where ``JSONARGPARSE_DEBUG=true`` asks for jsonargparse's full report.

    jsonargparse (4.53) reads the variable as a boolean, ``true`` or ``false``, and any other
    value (``1``) makes its first parser raise a ValueError with a traceback; such a value
    stops the run here instead, in one line saying what to write.
    """
    value = os.environ.get(DEBUG_VARIABLE, "")
    if value.lower() in ("", "false"):
        return False
    if value.lower() == "true":
        return True
    sys.stderr.write(f"train.py: error: {DEBUG_VARIABLE}={value} is not a value jsonargparse "
                     f"takes: {DEBUG_VARIABLE}=true shows its full report, false or unset "
                     "one line\n")
    sys.exit(2)


class OneLineErrorParser(LightningArgumentParser):
    """Reports a bad option, config file or class path as one line naming what was wrong and
    why, instead of the usage text and jsonargparse's nested report of every Union alternative
    (``JSONARGPARSE_DEBUG=true`` restores the full report with a traceback). A model whose
    ``__init__`` asks for an optimizer or schedule object (a config can only give callables)
    gets one line saying what to write instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        debug_report_requested()  # before jsonargparse reads the variable and fails on it
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or debug_report_requested():
            super().error(message, ex)
        from configs.messages import condense_error, instance_hints_in_error

        line = instance_hints_in_error(message)
        if line is None:
            line = f"{condense_error(message)} (python train.py --help lists the options)"
        sys.stderr.write(f"train.py: error: {line}\n")
        sys.exit(2)

    def parse_args(self, *args: Any, **kwargs: Any) -> Any:
        # A hint jsonargparse cannot check (``scheduler: torch.optim.lr_scheduler``, a module)
        # parses, and the model would get the config's Namespace instead of a callable.
        cfg = super().parse_args(*args, **kwargs)
        subcommand = cfg.get("subcommand")
        model = (cfg.get(subcommand) if subcommand else cfg).get("model")
        class_path = model.get("class_path") if hasattr(model, "get") else None
        hints = instance_hints(loaded_class(class_path)) if class_path else {}
        given = model.get("init_args") if hints else None
        if hints and any(given is not None and given.get(name) is not None for name in hints):
            from configs.messages import instance_hints_message

            line = instance_hints_message(class_path, hints)
            if not self.exit_on_error or debug_report_requested():
                super().error(line)
            sys.stderr.write(f"train.py: error: {line}\n")
            sys.exit(2)
        return cfg


def loaded_class(class_path: str) -> type | None:
    """The class a config names, if its module is already imported (jsonargparse imported
    it to check the config), else None: an error report imports nothing."""
    module_name, _, name = class_path.rpartition(".")
    found: Any = sys.modules.get(module_name)
    for attribute in name.split(".") if found is not None else ():
        found = getattr(found, attribute, None)
    return found if inspect.isclass(found) else None


def instance_hints(cls: type | None) -> dict[str, tuple[str, str]]:
    """``{parameter: (its hint, the callable type to use)}`` for the parameters of
    ``cls.__init__`` whose hints ask for an optimizer or LR schedule object (``Optimizer``,
    ``Adam``, ``LRScheduler``, also inside ``X | None``) or name the modules ``torch.optim`` /
    ``torch.optim.lr_scheduler``. No config gives such objects: an optimizer needs the
    model's parameters and a schedule its optimizer, so LightningCLI passes callables
    (``lightning.pytorch.cli.OptimizerCallable``, ``LRSchedulerCallable``) that build them."""
    if cls is None:
        return {}
    try:
        annotations = inspect.get_annotations(inspect.unwrap(cls.__init__), eval_str=True)
    except Exception:  # a hint that does not resolve: nothing to say about it
        return {}
    found = {}
    for name, hint in annotations.items():
        members = (typing.get_args(hint) if typing.get_origin(hint) in (typing.Union,
                   types.UnionType) else (hint,))
        for member in members:
            suggestion = _callable_for(member)
            if name != "return" and suggestion:
                found[name] = (_public_name(member), suggestion)
                break
    return found


def _callable_for(hint: Any) -> str | None:
    from torch.optim import Optimizer, lr_scheduler

    if inspect.ismodule(hint) and (hint.__name__ == "torch.optim"
                                   or hint.__name__.startswith("torch.optim.")):
        return "LRSchedulerCallable" if "lr_scheduler" in hint.__name__ else "OptimizerCallable"
    if inspect.isclass(hint) and issubclass(hint, Optimizer):
        return "OptimizerCallable"
    if inspect.isclass(hint) and issubclass(hint, (lr_scheduler.LRScheduler,
                                                   lr_scheduler.ReduceLROnPlateau)):
        return "LRSchedulerCallable"
    return None


def _public_name(hint: Any) -> str:
    """``torch.optim.Optimizer`` rather than ``torch.optim.optimizer.Optimizer``."""
    import torch.optim

    if inspect.ismodule(hint):
        return f"{hint.__name__} (a module)"
    for module in (torch.optim, torch.optim.lr_scheduler):
        if getattr(module, hint.__name__, None) is hint:
            return f"{module.__name__}.{hint.__name__}"
    return f"{hint.__module__}.{hint.__qualname__}"


