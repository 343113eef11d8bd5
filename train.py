"""Train, validate, test or predict any LightningModule + LightningDataModule from YAML.

    python train.py                          # fit the digits, then test the best checkpoint
    python train.py --config configs/x.yaml  # compose configs (later files win)
    python train.py fit|validate|test|predict ...   # one stage, LightningCLI style
    python train.py --ckpt_path last         # resume the newest run of this logger name
    python train.py predict --ckpt_path C --data.init_args.predict_path DIR   # -> predictions.csv

Every ``__init__`` argument of the model, data, Trainer and callbacks is an option (``--help``,
``--print_config``); the default configs: ``configs/__init__.py``.
"""

import inspect
import sys
from typing import Any

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

SUBCOMMANDS = ("fit", "validate", "test", "predict")
# What the model's __init__ gets from the datamodule, where it takes it: (data attribute, argument).
LINKS = (("task", "task"), ("num_classes", "num_classes"), ("class_names", "class_names"),
         ("num_outputs", "num_outputs"), ("target_names", "target_names"),
         ("target_mean", "target_mean"), ("target_std", "target_std"),
         ("num_features", "in_features"), ("in_channels", "in_channels"),
         ("ignore_index", "ignore_index"))


class TemplateCLI(LightningCLI):
    """LightningCLI plus the checkpoint callback as a config section, the links from the data
    to the model, errors in one line and ``--ckpt_path last``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"parser_class": configs.OneLineErrorParser, **kwargs})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        for source, target in LINKS:  # skipped for a model whose __init__ lacks the argument
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}",
                                  apply_on="instantiate")

    def parse_arguments(self, parser: configs.OneLineErrorParser, args: Any) -> None:
        # LightningCLI's own warns when given both an argv list and sys.argv.
        self.config = parser.parse_args(args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        parser.refuse_instance_hints(config.get("model"))
        self.configured_model = (config.get("model") or {}).get("class_path")
        if config.get("ckpt_path"):
            from models.checkpoints import check_ckpt_path

            check_ckpt_path(config, subcommand or "fit", self.configured_model)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("ckpt_path") or self.subcommand == "predict":
            from models.checkpoints import use_checkpoint

            use_checkpoint(config, self.subcommand, self.configured_model)

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
        if self.subcommand == "predict":
            from callbacks.prediction_writer import with_a_prediction_writer

            callbacks = with_a_prediction_writer(callbacks)
        return super().instantiate_trainer(callbacks=callbacks, **kwargs)


def prepared(argv: list[str], stage: str) -> tuple[list[str], dict[str, Any]]:
    """``argv`` with its aliases expanded (and the task's model for data that chooses no model),
    and the parser's defaults: the config chain for ``stage``."""
    argv = configs.expand_aliases(argv)
    if configs.config_files_in(argv):
        from configs.messages import check_yaml_syntax

        check_yaml_syntax(argv)
    if configs.chooses_data(argv):  # no digits.yaml: the model follows the data's task
        from configs.task_defaults import with_default_model

        argv = with_default_model(argv)
    return argv, {"default_config_files": configs.default_config_files(argv, stage),
                  "epilog": configs.ALIAS_HELP}


def main(args: list[str] | None = None) -> TemplateCLI:
    workarounds.apply()
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "check":  # the contract checks of check.py, an option
        from check import main as check_main

        sys.exit(check_main(argv[1:]))
    # No subcommand: fit, then test the best checkpoint (every DDP rank re-runs this argv).
    fit_then_test = not argv or argv[0] not in SUBCOMMANDS
    argv = ["fit", *argv] if fit_then_test else argv
    stage = argv[0]
    argv, defaults = prepared(argv, stage)
    try:
        cli = TemplateCLI(
            args=argv, parser_kwargs={sub: defaults for sub in SUBCOMMANDS},
            # validate/test on a run's checkpoint write <stage>_config.yaml into its folder.
            save_config_kwargs={"overwrite": True, "config_filename": "config.yaml"
                                if stage == "fit" else f"{stage}_config.yaml"},
            save_config_callback=None if stage == "predict" else SaveConfigCallback,
            seed_everything_default=0, auto_configure_optimizers=False)
        trainer, model = cli.trainer, cli.model
        if fit_then_test and trainer.state.finished and not trainer.interrupted:
            if is_overridden("test_step", model):
                best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
                trainer.test(model, datamodule=cli.datamodule, ckpt_path=best)
            else:
                rank_zero_info(f"Testing skipped: {type(model).__name__} has no test_step.")
    except SIGTERMException:
        # Pre-empted: the checkpoint callback saved last.ckpt. Exit 143 (128 + SIGTERM) like a
        # killed process, so a scheduler requeues the job.
        sys.stderr.write("train.py: stopped by SIGTERM; resume with --ckpt_path last\n")
        sys.exit(143)
    except Exception as error:
        # What the user can fix ends in one line and an exit status; a bug keeps its traceback.
        from configs.messages import one_line_for

        known = one_line_for(error)
        if known is None:
            raise
        configs.fail(*known)
    for callback in trainer.callbacks:  # after the last progress bar: RunSummary's table, ...
        if callable(getattr(callback, "report", None)):
            callback.report(trainer)
    workarounds.destroy_the_process_group()
    return cli


if __name__ == "__main__":
    main()
