"""The model a run gets when its config chooses data but no model: the template's module for
the data's task. Read from the command line and its ``--config`` files before parsing, like the
choice of ``digits.yaml`` (``configs.chooses_data``), so the parser sees an ordinary
``--model CLASS`` first and the config's ``model: init_args`` apply on top of it."""

import importlib
import inspect
from pathlib import Path
from typing import Any

import yaml

from configs import config_files_in, fail

MODEL_FOR_TASK = {
    "multiclass": "models.classifier.ImageClassifier",
    "multilabel": "models.classifier.ImageClassifier",
    "regression": "models.regressor.Regressor",
    "segmentation": "models.segmenter.Segmenter",
}


def config_files(argv: list[str]) -> list[Any]:
    """The parsed YAML of each ``--config`` in ``argv`` (unreadable ones are left to the
    parser, which reports them)."""
    loaded = []
    for path in config_files_in(argv):
        try:
            loaded.append(yaml.safe_load(Path(path).read_text()) or {})
        except (OSError, yaml.YAMLError):
            continue
    return loaded


def option_value(argv: list[str], names: tuple[str, ...]) -> str | None:
    """The last value ``argv`` gives any of ``names`` (``--x v`` or ``--x=v``)."""
    found = None
    for i, token in enumerate(argv):
        name, eq, value = token.partition("=")
        if name in names:
            found = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return found


def chooses_model(argv: list[str]) -> bool:
    """``--model CLASS`` / ``--model.class_path``, or a config whose ``model`` names a class."""
    if option_value(argv, ("--model", "--model.class_path")) is not None:
        return True
    for config in config_files(argv):
        model = config.get("model") if isinstance(config, dict) else None
        if isinstance(model, str) or (isinstance(model, dict) and "class_path" in model):
            return True
    return False


def data_task(argv: list[str]) -> str:
    """The ``task`` the data is given (the last one wins, as in the parser), else the default
    of its class's ``task`` argument; ``multiclass`` when neither says."""
    task, data_class = None, None
    for config in config_files(argv):
        data = config.get("data") if isinstance(config, dict) else None
        if isinstance(data, str):
            data_class = data
        elif isinstance(data, dict):
            data_class = data.get("class_path", data_class)
            init_args = data.get("init_args")
            if isinstance(init_args, dict) and "task" in init_args:
                task = init_args["task"]
    task = option_value(argv, ("--data.init_args.task", "--data.task")) or task
    data_class = option_value(argv, ("--data", "--data.class_path")) or data_class
    return task or default_task(data_class) or "multiclass"


def default_task(class_path: str | None) -> str | None:
    """The default of ``task`` in the datamodule class's ``__init__`` (e.g. ``regression``
    for an example datamodule), or None where it has none or cannot be imported (the parser
    then reports it)."""
    if not class_path or "." not in class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        data_class = getattr(importlib.import_module(module), name)
        parameter = inspect.signature(data_class.__init__).parameters.get("task")
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


def with_default_model(argv: list[str]) -> list[str]:
    """``argv`` with ``--model <the task's module>`` after the subcommand when it chooses no
    model; ends the command in one line for task ``none``, which has no module of the template's."""
    if chooses_model(argv):
        return argv
    task = data_task(argv)
    if task == "none":
        fail("task: none has no default model: set model.class_path (or --model) to your own "
             "LightningModule")
    model = MODEL_FOR_TASK.get(task)
    return argv if model is None else [argv[0], "--model", model, *argv[1:]]
