"""What train.py would run for a sweep's options, found and checked by train.py itself (its
``--print_config``, in this process), so that a bad option or value stops the sweep in one line
before any trial runs."""

import argparse
import contextlib
import io
import json
from typing import Any

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution

from sweeps import SweepError
from sweeps.search_space import command_line_value


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


def sample_values(space: dict[str, BaseDistribution]) -> list[dict[str, Any]]:
    """Sets of values that together try every categorical choice and both ends of each range,
    so that train.py's parser sees every value the sweep may give it."""
    def ends(dist: BaseDistribution) -> list[Any]:
        if isinstance(dist, CategoricalDistribution):
            return list(dist.choices)
        return [dist.low, dist.high]

    sets = max(len(ends(d)) for d in space.values()) if space else 1
    return [{name: ends(d)[i % len(ends(d))] for name, d in space.items()} for i in range(sets)]


def run_arguments(options: argparse.Namespace, train_args: list[str], values: dict[str, Any],
                  trial: int, fold: int | None, monitor: str) -> list[str]:
    """train.py's options for one run of a trial: the sweep's own, the trial's values, the
    fold, where the run goes (``<dir>/<name>/trial_NNNN[/fold_K]``, also the logger's version)
    and, with a pruner, the callback that reports to the trial (in the first fold only: Optuna's
    pruners compare a trial's best value so far, so a second fold would be judged by the
    first)."""
    run = f"trial_{trial:04d}" + (f"/fold_{fold}" if fold is not None else "")
    args = [*train_args, *(f"--{name}={command_line_value(v)}" for name, v in values.items())]
    if fold is not None:
        args += [f"--data.init_args.folds={options.folds}", f"--data.init_args.fold={fold}"]
    args += [f"--trainer.default_root_dir={options.folder / run}",
             f"--trainer.logger.init_args.save_dir={options.folder.parent}",
             f"--trainer.logger.init_args.name={options.folder.name}",
             f"--trainer.logger.init_args.version={run}"]
    if options.pruner != "none" and not fold:
        pruning = {"class_path": "callbacks.optuna_pruning.OptunaPruning", "init_args": {
            "storage": options.storage_spec, "study_name": options.name, "trial": trial,
            "monitor": monitor, "pruner": {
                "class_path": "optuna.pruners.MedianPruner", "init_args": {
                    "n_startup_trials": options.startup_trials,
                    "n_warmup_steps": options.warmup_epochs}}}}
        args.append(f"--trainer.callbacks+={json.dumps(pruning)}")
    return args


def check_options(options: argparse.Namespace, train_args: list[str],
                  space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Everything the sweep will hand to train.py, checked by train.py's parser before any
    trial runs: the options alone, with the folds, then the exact arguments of a trial with
    the values of the search space (a failure is narrowed down to the option it comes from).
    Returns the resolved config of the options (with the folds)."""
    config = resolved_config(train_args)
    fold_args = [f"--data.init_args.folds={options.folds}", "--data.init_args.fold=0"] \
        if options.folds else []
    if fold_args:  # the options alone are fine: a failure now is the datamodule's
        try:
            config = resolved_config([*train_args, *fold_args])
        except SweepError as error:
            raise SweepError(f"--folds needs a datamodule with folds and fold arguments "
                             f"(datamodules.base.TableDataModule has them): {error}"
                             ) from None
    check_run_placement(config)
    monitor = config["checkpoint"]["monitor"]
    for values in sample_values(space):
        try:
            resolved_config(run_arguments(options, train_args, values, 0, 0 if options.folds
                                          else None, monitor))
        except SweepError as whole:
            for name, value in values.items():  # which one
                try:
                    resolved_config([*train_args, f"--{name}={command_line_value(value)}"])
                except SweepError as error:
                    raise SweepError(f"{options.search}: {name}={command_line_value(value)}: "
                                     f"{error}") from None
            raise SweepError(f"the options sweep.py adds to each run (logger placement, "
                             f"pruning callback) do not fit this config: {whole}") from None
    return config


def check_run_placement(config: dict[str, Any]) -> None:
    """What sweep.py needs of the config to place each run and read its result."""
    logger = config["trainer"].get("logger")
    kind = str(logger.get("class_path", "")).rpartition(".")[2] if isinstance(logger, dict) \
        else ""
    if kind not in ("TensorBoardLogger", "CSVLogger"):
        raise SweepError("trainer.logger: sweep.py places each run in its own folder through a "
                         "TensorBoardLogger or CSVLogger (save_dir/name/version) and reads its "
                         f"summary.json there; this config's logger is {logger!r}")
    checkpoint = config.get("checkpoint") or {}
    if not checkpoint.get("monitor"):
        raise SweepError("checkpoint.monitor is null: the sweep's objective is the monitored "
                         "validation metric; set --checkpoint.monitor and --checkpoint.mode")
    if checkpoint.get("dirpath"):
        raise SweepError(f"checkpoint.dirpath is {checkpoint['dirpath']!r}: every trial would "
                         "write its checkpoints there; leave it null (each run's own folder)")


def first_difference(old: Any, new: Any, key: str = "") -> str | None:
    """The first dotted key whose value differs between two resolved configs, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for name in [*old, *(k for k in new if k not in old)]:
            found = first_difference(old.get(name), new.get(name), f"{key}.{name}".lstrip("."))
            if found:
                return found
        return None
    return None if old == new else f"{key or '(config)'}: {old!r} -> {new!r}"


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
    """The cross-validation folds of the configured data (:func:`datamodules.folds.fold_table`),
    which also checks that every class has enough rows for the folds."""
    from datamodules.folds import fold_table as folds_of
    from errors import DataError

    data = json.loads(json.dumps(config["data"]))
    data["init_args"] = {**data.get("init_args", {}), "folds": folds, "fold": 0}
    datamodule = datamodule_from(data)
    try:
        datamodule.prepare_data()
        return folds_of(datamodule)
    except DataError as error:
        raise SweepError(f"--folds {folds}: {error}") from None
