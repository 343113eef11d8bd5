"""How train.py reads the command line: the default config chain, short options, and errors in
one line (their messages: ``configs.messages``, imported only on an error)."""

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


def default_config_files(argv: list[str], stage: str) -> list[str]:
    """``default.yaml``; ``digits.yaml`` (the default data and model) unless ``argv`` chooses its
    own data, which must not inherit the digits' init_args; ``predict.yaml`` for ``predict``."""
    names = ["default", *([] if chooses_data(argv) else ["digits"]),
             *(["predict"] if stage == "predict" else [])]
    return [str(FOLDER / f"{name}.yaml") for name in names]


def chooses_data(argv: list[str]) -> bool:
    """``--data CLASS`` (``--data.class_path``), or a ``--config`` whose ``data`` names a class
    or is null (``--data.init_args.x`` changes the data already chosen)."""
    if any(token.partition("=")[0] in ("--data", "--data.class_path") for token in argv):
        return True
    for path in config_files_in(argv):
        try:
            data = (yaml.safe_load(Path(path).read_text()) or {}).get("data", {})
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


# Short options, rewritten to the full key before parsing: --print_config, the saved config and
# configs see only the full key (a jsonargparse link would forbid trainer.devices in a config).
ALIASES = {**{f"--{name}": f"--trainer.{name}" for name in (
    "devices", "num_nodes", "max_epochs", "max_steps", "precision", "accelerator", "strategy",
    "fast_dev_run")}, "--seed": "--seed_everything"}
ALIAS_HELP = "Short options: " + ", ".join(f"{a} = {t}" for a, t in ALIASES.items()) + "."


def expand_aliases(argv: list[str]) -> list[str]:
    """``--devices 2`` / ``--devices=2`` -> ``--trainer.devices ...``; other tokens untouched."""
    return [ALIASES[name] + sep + value if name in ALIASES else token
            for token in argv for name, sep, value in [token.partition("=")]]


def fail(line: str, status: int = 2) -> NoReturn:
    sys.stderr.write(f"train.py: error: {line}\n")
    sys.exit(status)


def debug_report_requested() -> bool:
    """Whether ``JSONARGPARSE_DEBUG=true`` asks for jsonargparse's full report. jsonargparse
    (4.53) fails with a traceback on any value but true and false: one line instead."""
    value = os.environ.get("JSONARGPARSE_DEBUG", "")
    if value.lower() not in ("", "false", "true"):
        fail(f"JSONARGPARSE_DEBUG={value} is not a value jsonargparse takes: JSONARGPARSE_DEBUG"
             "=true shows its full report, false or unset one line")
    return value.lower() == "true"


class OneLineErrorParser(LightningArgumentParser):
    """Reports a bad option, config file or class path in one line saying what was wrong and why,
    not the usage and jsonargparse's report of every Union alternative (``JSONARGPARSE_DEBUG=true``
    restores that, with a traceback)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        debug_report_requested()  # before jsonargparse reads the variable and fails on it
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or debug_report_requested():
            super().error(message, ex)
        from configs.messages import parser_error_line

        fail(parser_error_line(message))

    def refuse_instance_hints(self, model: Any) -> None:
        """A model asking for an optimizer or schedule object gets one line saying what to write
        (jsonargparse cannot check a module hint and would pass the model a Namespace)."""
        class_path = model.get("class_path") if hasattr(model, "get") else None
        hints = instance_hints(loaded_class(class_path)) if class_path else {}
        given = (model.get("init_args") or {}) if hints else {}
        if any(given.get(name) is not None for name in hints):
            from configs.messages import instance_hints_message

            line = instance_hints_message(class_path, hints)
            if not self.exit_on_error or debug_report_requested():
                super().error(line)
            fail(line)


def loaded_class(class_path: str) -> type | None:
    """The class a config names if its module is already imported (jsonargparse imported it to
    check the config), else None: an error report imports nothing."""
    module_name, _, name = class_path.rpartition(".")
    found: Any = sys.modules.get(module_name)
    for attribute in name.split(".") if found is not None else ():
        found = getattr(found, attribute, None)
    return found if inspect.isclass(found) else None


def instance_hints(cls: type | None) -> dict[str, tuple[Any, str]]:
    """``{parameter: (its hint, the callable type to use)}`` for the parameters of ``cls.__init__``
    whose hints (also inside ``X | None``) ask for an optimizer or LR schedule object, or name
    ``torch.optim`` modules. No config gives such objects (an optimizer needs the parameters, a
    schedule its optimizer): LightningCLI passes callables that build them."""
    if cls is None:
        return {}
    try:
        annotations = inspect.get_annotations(inspect.unwrap(cls.__init__), eval_str=True)
    except Exception:  # a hint that does not resolve: nothing to say about it
        return {}
    found = {}
    for name, hint in annotations.items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        for member in typing.get_args(hint) if union else (hint,):
            if suggestion := _callable_for(member):
                found[name] = (member, suggestion)
                break
    return found


def _callable_for(hint: Any) -> str | None:
    from torch.optim import Optimizer, lr_scheduler

    if inspect.ismodule(hint) and (hint.__name__ + ".").startswith("torch.optim."):
        return "LRSchedulerCallable" if "lr_scheduler" in hint.__name__ else "OptimizerCallable"
    if inspect.isclass(hint) and issubclass(hint, Optimizer):
        return "OptimizerCallable"
    schedules = (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)
    return "LRSchedulerCallable" if inspect.isclass(hint) and issubclass(hint, schedules) else None

