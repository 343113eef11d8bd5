"""What train.py would run for a sweep's options, found and checked by train.py itself (its
``--print_config``, in this process), so that a bad option or value stops the sweep in one line
before any trial runs."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from typing import Any

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution

from sweeps.search_space import command_line_value


class SweepError(Exception):
    """Bad options or search space: reported in one line, exit 2, before anything is written."""


def resolved_config(train_args: list[str]) -> dict[str, Any]:
    """train.py's full config for these options (its ``--print_config``, in this process), or
    SweepError with train.py's one-line error."""
    import train  # imports Lightning: only once the options are known to be fine

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            train.main(["fit", *train_args, "--print_config"])
    except SystemExit as exit_:
        if exit_.code:
            message = err.getvalue().strip().splitlines() or [f"exit status {exit_.code}"]
            raise SweepError(message[-1].removeprefix("train.py: error: ")) from None
    return yaml.safe_load(out.getvalue())


def sample_overrides(space: dict[str, BaseDistribution]) -> list[list[str]]:
    """Option lists that together try every categorical choice and both ends of each range,
    so that train.py's parser sees every value the sweep may give it."""
    def ends(dist: BaseDistribution) -> list[Any]:
        if isinstance(dist, CategoricalDistribution):
            return list(dist.choices)
        return [dist.low, dist.high]

    lists = max(len(ends(d)) for d in space.values()) if space else 1
    return [[f"--{name}={command_line_value(ends(d)[i % len(ends(d))])}"
             for name, d in space.items()] for i in range(lists)]


def check_options(options: argparse.Namespace, train_args: list[str],
                  space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Everything the sweep will hand to train.py, checked by train.py's parser before any
    trial runs: the options alone, then with the values of the search space (a failure is
    narrowed down to the option it comes from). Returns the options' resolved config."""
    fold_args = [f"--data.init_args.folds={options.folds}", "--data.init_args.fold=0"] \
        if options.folds else []
    try:
        config = resolved_config([*train_args, *fold_args])
    except SweepError as error:
        if fold_args and "fold" in str(error):
            raise SweepError(f"--folds needs a datamodule with folds and fold arguments "
                             f"(datamodules.base.ClassificationDataModule has them): {error}"
                             ) from None
        raise
    for overrides in sample_overrides(space):
        try:
            resolved_config([*train_args, *fold_args, *overrides])
        except SweepError:
            for override in overrides:  # which one
                try:
                    resolved_config([*train_args, *fold_args, override])
                except SweepError as error:
                    raise SweepError(f"{options.search}: {override.removeprefix('--')}: "
                                     f"{error}") from None
            raise
    logger = config["trainer"].get("logger")
    if not logger:
        raise SweepError("trainer.logger is off: sweep.py reads each run's summary.json from "
                         "its log folder; keep a logger (TensorBoardLogger or CSVLogger)")
    if isinstance(logger, list) or (isinstance(logger, dict) and not {
            "save_dir", "name", "version"} <= set(logger.get("init_args") or {})):
        raise SweepError("trainer.logger: sweep.py places each trial's run with the logger's "
                         "save_dir, name and version (TensorBoardLogger, CSVLogger); this one "
                         "has no such arguments")
    if not (config.get("checkpoint") or {}).get("monitor"):
        raise SweepError("checkpoint.monitor is null: the sweep's objective is the monitored "
                         "validation metric; set --checkpoint.monitor and --checkpoint.mode")
    return config


def datamodule_from(data: dict[str, Any]) -> Any:
    """The datamodule a config's ``data`` section (class_path + init_args) describes."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--data", type=LightningDataModule)
    # ``instantiate`` replaced ``instantiate_classes`` in jsonargparse 4.49.
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(parser.parse_object({"data": data})).data


def fold_table(config: dict[str, Any], folds: int) -> Any:
    """The cross-validation folds of the configured data (its ``fold_table``), which also checks
    that every class has enough rows for the folds."""
    from datamodules.validation import DataError

    data = json.loads(json.dumps(config["data"]))
    data["init_args"] = {**data.get("init_args", {}), "folds": folds, "fold": 0}
    datamodule = datamodule_from(data)
    try:
        datamodule.prepare_data()
        return datamodule.fold_table()
    except DataError as error:
        raise SweepError(f"--folds {folds}: {error}") from None
