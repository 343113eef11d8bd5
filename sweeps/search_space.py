"""A sweep's search space: a YAML file keyed by train.py's own dotted option names.

    model.init_args.optimizer.init_args.lr: {float: [1.0e-4, 1.0e-1], log: true}
    data.init_args.batch_size: {int: [16, 64], step: 16}
    model.init_args.backbone.init_args.dropout: {categorical: [0.0, 0.1, 0.3]}
    model.init_args.optimizer: {categorical: [torch.optim.AdamW, torch.optim.RAdam]}

``float`` and ``int`` take ``[low, high]`` (both included) and optionally ``log: true`` or a
``step``; ``categorical`` takes a list of choices: numbers, strings, class paths (a new
``class_path`` keeps the ``init_args`` the classes share, as on train.py's command line) or
whole ``{class_path, init_args}`` mappings. This module checks the file's form; whether train.py
takes each option and value is checked by train.py's own parser (``sweep.py`` does that before
the first trial).
"""

import json
from pathlib import Path
from typing import Any

import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

KINDS = ("float", "int", "categorical")


class SearchSpaceError(ValueError):
    """The search file is not a valid search space; the message names the file and option."""


def load_search_space(path: str | Path) -> dict[str, BaseDistribution]:
    """Optuna distributions by option name, in the file's order."""
    path = Path(path)
    if not path.is_file():
        raise SearchSpaceError(f"search space not found: {path}")
    try:
        entries = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SearchSpaceError(f"{path}: not valid YAML ({error})".replace("\n", " ")) from None
    if not isinstance(entries, dict) or not entries:
        raise SearchSpaceError(f"{path}: expected a mapping of option names to ranges, e.g. "
                               "'model.init_args.optimizer.init_args.lr: {float: [1.0e-4, "
                               "1.0e-1], log: true}'")
    space = {}
    for name, spec in entries.items():
        try:
            space[str(name).removeprefix("--")] = distribution(spec)
        except SearchSpaceError as error:
            raise SearchSpaceError(f"{path}: {name}: {error}") from None
    return space


def distribution(spec: Any) -> BaseDistribution:
    """One entry's Optuna distribution."""
    if not isinstance(spec, dict) or sum(kind in spec for kind in KINDS) != 1:
        raise SearchSpaceError(f"expected exactly one of {', '.join(KINDS)}, got {spec!r}")
    kind = next(kind for kind in KINDS if kind in spec)
    options = {key: value for key, value in spec.items() if key != kind}
    unknown = sorted(set(options) - ({"log", "step"} if kind != "categorical" else set()))
    if unknown:
        raise SearchSpaceError(f"unknown setting(s) {unknown} for {kind}")
    if kind == "categorical":
        choices = spec[kind]
        if not isinstance(choices, list) or not choices:
            raise SearchSpaceError(f"categorical needs a non-empty list of choices, "
                                   f"got {choices!r}")
        labels = [choice_label(choice) for choice in choices]
        if len(set(labels)) != len(labels):
            raise SearchSpaceError(f"categorical choices repeat: {labels}")
        return CategoricalDistribution(labels)
    # YAML 1.1 (PyYAML) reads 1e-4, without a dot, as a string; train.py's configs accept it.
    bounds = [as_number(b) for b in spec[kind]] if isinstance(spec[kind], list) else spec[kind]
    options = {key: as_number(value) for key, value in options.items()}
    number = int if kind == "int" else (int, float)
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, number) and not isinstance(b, bool) for b in bounds)):
        raise SearchSpaceError(f"{kind} needs [low, high] ({kind} numbers), got {bounds!r}")
    low, high = bounds
    if low >= high:
        raise SearchSpaceError(f"empty range [{low}, {high}]: low must be below high")
    log, step = bool(options.get("log", False)), options.get("step")
    if log and low <= 0:
        raise SearchSpaceError(f"log: true needs low > 0, got {low}")
    if log and step is not None:
        raise SearchSpaceError("log and step cannot be combined (Optuna's rule)")
    if step is not None and (not isinstance(step, number) or step <= 0):
        raise SearchSpaceError(f"step must be a positive {kind}, got {step!r}")
    if kind == "int":
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(float(low), float(high), log=log, step=step)


def as_number(value: Any) -> Any:
    """``"1e-4"`` -> ``0.0001``; anything else as it is."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value and "e" not in \
            value.lower() else number
    return value


def choice_label(choice: Any) -> str | int | float | bool | None:
    """What Optuna stores for a categorical choice: numbers, strings, booleans and null as
    they are; lists and mappings (e.g. a whole ``{class_path, init_args}``) as compact JSON,
    which train.py's command line reads back."""
    if choice is None or isinstance(choice, (str, int, float, bool)):
        return choice
    return json.dumps(choice, separators=(",", ":"))


def command_line_value(value: Any) -> str:
    """A sampled value as train.py's command line writes it (``--name=<this>``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)
