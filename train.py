"""Train, validate, test or predict any LightningModule + LightningDataModule from YAML.

    python train.py                          # fit the digits, then test the best checkpoint
    python train.py --devices 2              # the same as real 2-process DDP
    python train.py --config configs/x.yaml  # compose configs (later files win)
    python train.py fit|validate|test|predict ...   # one stage, LightningCLI style
    python train.py --ckpt_path last         # resume the newest run of this logger name
    python train.py predict --ckpt_path C --data.init_args.predict_path DIR   # -> predictions.csv

Configuration is LightningCLI (jsonargparse): every ``__init__`` argument of the model, the
datamodule, the Trainer and the callbacks is an option; ``--print_config`` shows what a run
does. The default config chain, before any ``--config``: ``configs/default.yaml``; then
``configs/digits.yaml`` unless the command chooses its own data (``--data CLASS``, or a
``--config`` whose ``data:`` names a class); then, for ``predict`` only, ``configs/predict.yaml``.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import lightning.pytorch
from jsonargparse import ActionConfigFile
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden

import configs
import workarounds
from callbacks.checkpoint import Checkpoint
from errors import DataError

# What only some commands need is imported where they need it, so a default run reads none of
# it: check.py (`train.py check`), models.checkpoints (a command given --ckpt_path),
# configs.task_defaults (a command that chooses its own data), configs.messages (an error the
# user can fix, told in one line).

SUBCOMMANDS = ("fit", "validate", "test", "predict")
# What the model's __init__ gets from the datamodule (data attribute, model argument), where
# the model takes that argument: the task, the outputs and the input size the data knows.
LINKS = (("task", "task"), ("num_classes", "num_classes"), ("class_names", "class_names"),
         ("num_outputs", "num_outputs"), ("target_names", "target_names"),
         ("target_mean", "target_mean"), ("target_std", "target_std"),
         ("num_features", "in_features"), ("in_channels", "in_channels"),
         ("ignore_index", "ignore_index"))


class TemplateCLI(LightningCLI):
    """LightningCLI plus: the checkpoint callback as a config section, what the model needs to
    know about the data handed to it, and ``--ckpt_path last``."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # LightningCLI's own, with errors in one line (LightningCLI's parser_class argument).
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={lightning.pytorch.__version__}"])
        parser = configs.OneLineErrorParser(**kwargs)
        parser.add_argument("-c", "--config", action=ActionConfigFile,
                            help="Path to a configuration file in json or yaml format.")
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        # Into any model whose __init__ takes them (ImageClassifier passes in_features on to its
        # backbone); skipped where it does not.
        for source, target in LINKS:
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}",
                                  apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # LightningCLI's own version warns when it gets both an argv list and sys.argv, which
        # main() always gives it (it inserts the subcommand).
        self.config = parser.parse_args(args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        self.configured_model = (config.get("model") or {}).get("class_path")
        if config.get("ckpt_path"):
            from models.checkpoints import check_ckpt_path

            check_ckpt_path(config, subcommand or "fit", self.configured_model)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        used = (config.get("model") or {}).get("class_path")
        if self.configured_model and used and used != self.configured_model:
            rank_zero_info(f"{self.subcommand}: the checkpoint holds a {used}; it is used "
                           f"instead of the configured {self.configured_model}")
        if self.subcommand == "predict":
            if not ckpt_path:
                raise DataError("predict needs --ckpt_path: a checkpoint of the trained model")
            # The classes come from the checkpoint, not from the data to predict.
            from models.checkpoints import class_names_in

            names = class_names_in(ckpt_path)
            if names and "class_names" in (config.data.get("init_args") or {}):
                config.data.init_args.class_names = names

    def after_instantiate_classes(self) -> None:
        required = inspect.signature(type(self.model).__init__).parameters
        for source, target in LINKS:  # a link the data cannot serve leaves the argument None
            if (target in required and required[target].default is inspect.Parameter.empty
                    and getattr(self.datamodule, source, None) is None):
                raise DataError(f"{type(self.model).__name__} needs {target}, which the data "
                                f"({type(self.datamodule).__name__}) does not give: add a "
                                f"`{source}` attribute or property to it")
        workarounds.drop_link_values_the_model_does_not_take(
            self.model, tuple(target for _, target in LINKS))

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        callbacks = config["trainer"].get("callbacks") or []
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        if config["trainer"].get("enable_progress_bar") is False:  # it wins over a listed bar
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)


def prepared(argv: list[str], stage: str) -> tuple[list[str], dict[str, Any]]:
    """``argv`` with its aliases expanded (and the default model for data that names a task),
    and the parser's defaults: the config chain for ``stage``. Exits with one line for a
    config file that is not valid YAML."""
    argv = configs.expand_aliases(argv)
    bad_yaml = configs.yaml_syntax_error(argv)
    if bad_yaml:
        sys.stderr.write(f"train.py: error: {bad_yaml}\n")
        sys.exit(2)
    if configs.chooses_data(argv):  # no digits.yaml: the model follows the data's task
        from configs.task_defaults import NoDefaultModel, with_default_model

        try:
            argv = with_default_model(argv)
        except NoDefaultModel as error:
            sys.stderr.write(f"train.py: error: {error}\n")
            sys.exit(2)
    return argv, {"default_config_files": configs.default_config_files(argv, stage),
                  "epilog": configs.ALIAS_HELP}


def main(args: list[str] | None = None) -> TemplateCLI:
    workarounds.apply()
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "check":  # the contract checks of check.py, an option
        from check import main as check_main

        sys.exit(check_main(argv[1:]))
    # Without a subcommand: fit, then test the best checkpoint. DDP re-executes this script
    # with the same argv, so every rank takes the same decision.
    fit_then_test = not argv or argv[0] not in SUBCOMMANDS
    if fit_then_test:
        argv.insert(0, "fit")
    stage = argv[0]
    argv, defaults = prepared(argv, stage)
    try:
        cli = TemplateCLI(
            args=argv,
            parser_kwargs={sub: defaults for sub in SUBCOMMANDS},
            # Predict saves no config. validate/test on a run's checkpoint log into that run's
            # folder: their config goes to <stage>_config.yaml, the fit's config.yaml stays.
            save_config_kwargs={"overwrite": True, "config_filename": "config.yaml"
                                if stage == "fit" else f"{stage}_config.yaml"},
            save_config_callback=None if stage == "predict" else SaveConfigCallback,
            seed_everything_default=0, auto_configure_optimizers=False,
        )
        trainer, model = cli.trainer, cli.model
        if fit_then_test and trainer.state.finished and not trainer.interrupted:
            if is_overridden("test_step", model):
                best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
                trainer.test(model, datamodule=cli.datamodule, ckpt_path=best)
            else:
                rank_zero_info(f"Testing skipped: {type(model).__name__} has no test_step.")
    except SIGTERMException:
        # Pre-empted: Lightning finished the batch, the checkpoint callback saved last.ckpt.
        # Exit 143 (128 + SIGTERM) like a killed process, so a scheduler requeues the job.
        sys.stderr.write("train.py: stopped by SIGTERM; resume with --ckpt_path last\n")
        sys.exit(143)
    except Exception as error:
        # What the user can fix (bad data or options, a refused write, a NaN loss), found before
        # or during the run: one line naming the file, row or option, and an exit status. Any
        # other error is a bug and keeps its traceback.
        from configs.messages import one_line_for

        known = one_line_for(error)
        if known is None:
            raise
        sys.stderr.write(f"train.py: error: {known[0]}\n")
        sys.exit(known[1])
    for callback in trainer.callbacks:
        # Once the whole command (fit, then test) is done, after the last progress bar: the
        # callbacks with something to say (RunSummary's table, where predictions went).
        if callable(getattr(callback, "report", None)):
            callback.report(trainer)
    workarounds.destroy_the_process_group()
    return cli


if __name__ == "__main__":
    main()
