"""Train, validate, test or predict any LightningModule + LightningDataModule from YAML.

    python train.py                          # fit the default config, then test the best checkpoint
    python train.py --devices 2              # the same as real 2-process DDP
    python train.py --config configs/x.yaml  # compose configs (later files win)
    python train.py fit|validate|test|predict ...   # one stage, LightningCLI style
    python train.py --ckpt_path last         # resume the newest run of this config
    python train.py predict --ckpt_path C --data.init_args.predict_path DIR   # -> predictions.csv

Configuration is LightningCLI (jsonargparse): every ``__init__`` argument of the model, the
datamodule and the Trainer is an option, ``--print_config`` shows the resolved config.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import importlib
import inspect
import logging
import operator
import os
import re
import sys
import types
import typing
import warnings
from pathlib import Path
from typing import Any, NoReturn

# Lightning's own calls trigger these; they are not actionable for a user of this template.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import torch
import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import default_collate

from callbacks.atomic_checkpoint_io import AtomicCheckpointIO
from callbacks.checkpoint import Checkpoint
from callbacks.finite_loss import NonFiniteLossError, StopOnNonFiniteLoss
from callbacks.prediction_writer import PredictionCSVWriter
from callbacks.preprocessing_metadata import PreprocessingMetadata
from callbacks.progress import default_progress_bar
from callbacks.rank_failure import ReportRankFailure
from callbacks.rng_state import RNGState
from callbacks.run_summary import RunSummary
from datamodules.validation import DataError


def drop_failing_nvml_check() -> None:
    """Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``: torch then asks NVML
    whether there is a GPU (so that asking does not initialise CUDA before processes fork).
    Where there is no NVML library (CPU-only machines with a CUDA build of torch), every
    ``torch.cuda.is_available()`` tries to load it again, fails, and falls back to the CUDA
    runtime: ~40 us, and Adam and SGD ask on every step. Without NVML the answer is the
    runtime's either way, so only the failing load is dropped."""
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1":
        return
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]


drop_failing_nvml_check()


def silence_unactionable_messages() -> None:
    """Drop two messages every run would print that the user can do nothing about: torch 2.14
    warns that Lightning's own pytree helper uses ``isinstance(..., LeafSpec)``, and Lightning
    advertises its cloud logger whenever another logger is used. Everything else Lightning
    says is kept."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _drop_cloud_logger_tip not in rank_zero_log.filters:
        rank_zero_log.addFilter(_drop_cloud_logger_tip)


def _drop_cloud_logger_tip(record: logging.LogRecord) -> bool:
    return "litlogger" not in str(record.msg)


def read_whole_numbers_as_batch_counts() -> None:
    """``--trainer.limit_train_batches=1`` must mean one batch, not 100 % of them.

    The Trainer's ``limit_*_batches``, ``overfit_batches`` and ``val_check_interval`` read an
    int as a number of batches and a float as a fraction, and are annotated ``Union[int,
    float]``. ``typing`` caches unions, and unions of the same members compare equal in any
    order, so where another module built ``Union[float, int]`` first (seen with torch 2.11 on
    Python 3.12), the Trainer's annotation is that float-first union: jsonargparse tries float
    first and 1 becomes 1.0, every batch. Every Trainer annotation holding int and float is
    rebuilt with int first (``int | float`` unions are not cached); for options where both
    mean the same, e.g. ``gradient_clip_val``, that changes nothing."""
    # One dict: functools.wraps gives the Trainer's env-defaults wrapper the same object.
    annotations = inspect.unwrap(Trainer.__init__).__annotations__
    for name, hint in annotations.items():
        members = typing.get_args(hint)
        if (typing.get_origin(hint) in (typing.Union, types.UnionType)
                and int in members and float in members and members[0] is not int):
            int_first = (int, *(m for m in members if m is not int))
            annotations[name] = functools.reduce(operator.or_, int_first)


DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
DEFAULT_DATA_CLASS = "datamodules.digits.DigitsDataModule"  # configs/default.yaml's data
SUBCOMMANDS = ("fit", "validate", "test", "predict")

# Short options for what people change most. They are rewritten to the full key before parsing,
# so they are true synonyms: --print_config, the saved config and configs all see only the full
# key (jsonargparse links would instead forbid setting trainer.devices in a config).
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


class TemplateParser(LightningArgumentParser):
    """Reports a bad option, config file or class path as one line naming what was wrong,
    instead of the usage text and jsonargparse's nested report of every Union alternative
    (``JSONARGPARSE_DEBUG=1`` restores the full report with a traceback), and saves the run's
    ``config.yaml`` without validating it a second time."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        sys.stderr.write(f"train.py: error: {condense_error(message)} "
                         "(python train.py --help lists the options)\n")
        sys.exit(2)

    def save(self, cfg: Any, *args: Any, **kwargs: Any) -> None:
        # config.yaml is written from the config this parser has just validated; validating it
        # again took ~0.3 s inside every fit (Lightning's SaveConfigCallback calls this).
        kwargs.setdefault("skip_validation", True)
        super().save(cfg, *args, **kwargs)


_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:",
          "Expected a <class 'NoneType'>", "Expected a path but ")


def condense_error(message: str, max_parts: int = 4) -> str:
    """Keep the lines of a jsonargparse error that say what is wrong, joined on one line."""
    parts = []
    for line in message.splitlines():
        line = line.strip().removeprefix("- ").strip()
        if line and not line.startswith(_NOISE) and line not in parts:
            parts.append(line)
    text = " ".join(parts[:max_parts])
    return text if len(text) <= 400 else text[:397] + "..."


class TemplateCLI(LightningCLI):
    """LightningCLI with the default config, one-line errors, a forced ModelCheckpoint
    (``--checkpoint.*``; it also saves ``last.ckpt`` on an exception or SIGTERM) whose files are
    written atomically, a progress bar chosen for the terminal, and ``--ckpt_path last``
    resolved to the newest run's ``last.ckpt``."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        self.parser_class = TemplateParser
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        # Lightning's default bar is Rich whenever rich is installed, which fills a log file or a
        # CI page with escape codes; pick it by where the output goes instead. A progress bar in
        # the config's callbacks, or enable_progress_bar: false, is left as it is.
        listed = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in listed
        ):
            callbacks = [*callbacks, default_progress_bar()]
        config["plugins"] = with_atomic_checkpoint_io(config.get("plugins"))
        if config.get("profiler") is None:
            config["profiler"] = NoProfiler()
        return super()._instantiate_trainer(config, callbacks)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str,
                                   **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # Checkpoints are restored as tensors and plain types only, so a checkpoint from
        # elsewhere cannot run code. LightningCLI already reads --ckpt_path that way (for its
        # hyperparameters); the restore itself would follow torch's default, which loads full
        # pickles before torch 2.6.
        parser.set_defaults(weights_only=True)
        # Only `predict` has this option, so fit's saved config.yaml does not carry it.
        if subcommand == "predict":
            parser.add_argument(
                "--predict_output", type=str | None, default=None,
                help="CSV the predictions are written to (default: predictions.csv in the "
                     "checkpoint's run folder, or beside the checkpoint)",
            )
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # Parse the explicit argv list given by main(); LightningCLI's own version warns when
        # both that list and sys.argv are present, which is always the case here.
        self.config = parser.parse_args(args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            resolve_last_checkpoint(self.config[subcommand])
        config = self.config[subcommand] if subcommand else self.config
        data = config.get("data")
        if getattr(data, "class_path", DEFAULT_DATA_CLASS) != DEFAULT_DATA_CLASS:
            defaults = (self._subcommand_parsers[subcommand] if subcommand else parser
                        ).get_defaults()
            given = data_keys_given(list(args or []))
            kept = [key for key in data_settings_kept_from_default(data, defaults.get("data"))
                    if key not in given]
            if kept and rank_zero_only.rank == 0:
                sys.stderr.write(
                    f"train.py: warning: data.init_args {', '.join(kept)}: still the default "
                    f"config's values for {DEFAULT_DATA_CLASS} (jsonargparse keeps the "
                    "init_args a new data.class_path shares with the old one); set them in "
                    "your config if your data needs others (null: no batch transforms).\n")

    # Data is read and checked before the Trainer runs: bad input then fails here, in the main
    # process, before any logger or checkpoint folder exists. Lightning's own prepare_data /
    # setup calls later find the work done (setup is idempotent).
    def before_fit(self) -> None:
        self.check_data("fit")
        # What is alive now (torch, Lightning, the parsed config, the data: ~500k objects)
        # stays alive to the end. Frozen, it is no longer walked by the full garbage
        # collections that training's allocations trigger: ~0.3 s each, at random steps.
        gc.freeze()

    def before_validate(self) -> None:
        self.check_data("validate")

    def before_test(self) -> None:
        self.check_data("test")

    def before_predict(self) -> None:
        config = self.config["predict"]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            raise DataError("predict needs --ckpt_path: a checkpoint of the trained model")
        if not Path(ckpt_path).is_file():
            raise DataError(f"checkpoint not found: {ckpt_path}")
        # The classes come from the checkpoint, never from the data to predict: the datamodule
        # gets them before Lightning builds the model (configure_model sizes the head from
        # them) and restores the weights.
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        data_state = checkpoint.get(type(self.datamodule).__qualname__) or {}
        names = (checkpoint.get("hyper_parameters") or {}).get("class_names") \
            or data_state.get("class_names")
        if names and hasattr(self.datamodule, "load_state_dict"):
            self.datamodule.load_state_dict({"class_names": list(names)})
        self.check_data("predict")
        writers = [c for c in self.trainer.callbacks if isinstance(c, PredictionCSVWriter)]
        output = config.get("predict_output")
        if not writers:
            self.trainer.callbacks.append(
                PredictionCSVWriter(output or default_predict_output(ckpt_path)))
        elif output:
            writers[0].output_path = Path(output)

    def check_data(self, stage: str) -> None:
        datamodule = self.datamodule
        if datamodule is None:
            return
        # prepare_data is once per node; prediction reads no training data.
        if stage != "predict" and int(os.environ.get("LOCAL_RANK", 0)) == 0:
            datamodule.prepare_data()
        datamodule.setup(stage)
        # The model too, for the same reason (ImageClassifier.build_for): Lightning's own
        # configure_model call later finds it built.
        build_for = getattr(self.model, "build_for", None)
        names = getattr(datamodule, "class_names", None)
        if callable(build_for) and names:
            build_for(list(names))
            if stage == "fit":
                check_model_takes_a_sample(self.model, datamodule)


def check_model_takes_a_sample(model: Any, datamodule: Any) -> None:
    """Run one validation (else training) sample through the model, in eval mode and without
    gradients, before anything is written. A backbone that does not fit the data (``in_features``
    or ``in_channels`` unlike the data's) then fails here with one line naming both shapes,
    instead of with a traceback from inside the sanity check after the run folder exists.
    Skipped for compiled backbones (compiling twice costs more than it saves)."""
    datasets = getattr(datamodule, "datasets", None)
    if not isinstance(datasets, dict) or model.hparams.get("compile_backbone"):
        return
    dataset = next((datasets[s] for s in ("val", "train") if len(datasets.get(s) or ())), None)
    if dataset is None:
        return
    batch = datamodule.on_after_batch_transfer(default_collate([dataset[0]]), 0)
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(inputs)
    except RuntimeError as error:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        first_line = str(error).strip().splitlines()[0]
        raise DataError(
            f"the model does not take the data's samples (one sample of shape {shape}): "
            f"{first_line}. Check model.init_args.backbone (in_features / in_channels) "
            "against the data.") from error
    finally:
        model.train(was_training)


class NoProfiler(PassThroughProfiler):
    """The Trainer's profiler when none is asked for (``--trainer.profiler simple`` etc. still
    work). Lightning wraps every hook call, for every callback, in ``profiler.profile(...)``;
    the default pass-through profiler builds a generator-based context manager each time,
    ~7 us per callback per training step here, while this one hands back the same empty one."""

    def profile(self, action_name: str) -> contextlib.nullcontext:  # type: ignore[override]
        return _NOTHING


_NOTHING = contextlib.nullcontext()


def with_atomic_checkpoint_io(plugins: Any) -> Any:
    """The configured plugins plus :class:`AtomicCheckpointIO`, unless one of them already says
    how checkpoints are written."""
    listed = [] if plugins is None else list(plugins) if isinstance(plugins, list | tuple) \
        else [plugins]
    if any(isinstance(p, CheckpointIO) for p in listed):
        return plugins
    return [*listed, AtomicCheckpointIO()]


def default_predict_output(ckpt_path: str | Path) -> Path:
    """``<run>/predictions.csv`` for a checkpoint in ``<run>/checkpoints/``, else beside it."""
    folder = Path(ckpt_path).resolve().parent
    if folder.name == "checkpoints":
        folder = folder.parent
    return folder / "predictions.csv"


def data_settings_kept_from_default(data: Any, default: Any) -> list[str]:
    """The ``data.init_args`` that a config naming its own data class still takes from the
    default config's data module: equal to the default's values and unlike the new class's
    own defaults. Without a warning, such a config trains with the digits' batch size,
    caching, read mode and batch transforms (Pad(2), Normalize with digits statistics)."""
    if default is None or getattr(data, "class_path", None) in (None, default.class_path):
        return []
    module, _, name = data.class_path.rpartition(".")
    own_parser = LightningArgumentParser(exit_on_error=False)
    own_parser.add_class_arguments(getattr(importlib.import_module(module), name), "own",
                                   fail_untyped=False)
    own = own_parser.get_defaults().own.as_dict()
    values, previous = data.init_args.as_dict(), default.init_args.as_dict()
    return sorted(key for key, value in values.items()
                  if key in previous and key in own and value == previous[key] != own[key])


def data_keys_given(args: list[str]) -> set[str]:
    """The ``data.init_args`` keys a command sets itself: in its ``--config`` files or as
    ``--data.<key>`` / ``--data.init_args.<key>`` options (values equal to the default
    config's are then the user's choice, not a leftover)."""
    keys: set[str] = set()
    for i, token in enumerate(args):
        name, _, value = token.partition("=")
        if name in ("--config", "-c"):
            path = value or (args[i + 1] if i + 1 < len(args) else "")
            with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
                data = (yaml.safe_load(Path(path).read_text()) or {}).get("data")
                keys |= set((data or {}).get("init_args") or {})
        given = re.match(r"--data\.(?:init_args\.)?(\w+)", name)
        if given:
            keys.add(given.group(1))
    return keys


def resolve_last_checkpoint(config: Any) -> None:
    """Turn ``ckpt_path: last`` into the newest ``last.ckpt`` of this logger's runs and make the
    logger write into that run's version folder, so a resumed run continues the same logs and
    checkpoints instead of starting a new version that has no ``last.ckpt``."""
    logger = config.get("trainer.logger")
    init_args = getattr(logger, "init_args", None)
    if init_args is None or "save_dir" not in init_args:
        return
    runs = Path(init_args.save_dir) / (init_args.get("name") or "")
    ckpt_path = config.get("ckpt_path")
    if ckpt_path == "last":
        candidates = sorted(runs.glob("*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            warnings.warn(f"--ckpt_path last: no last.ckpt under {runs}; starting from scratch.",
                          stacklevel=1)
            config["ckpt_path"] = None
            return
        ckpt_path = str(candidates[-1])
        config["ckpt_path"] = ckpt_path
    if ckpt_path and init_args.get("version") is None:
        run_dir = Path(ckpt_path).resolve().parent.parent
        if run_dir.parent == runs.resolve():
            init_args["version"] = run_dir.name


def main(args: list[str] | None = None) -> TemplateCLI:
    silence_unactionable_messages()
    read_whole_numbers_as_batch_counts()
    argv = list(sys.argv[1:] if args is None else args)
    # Without a subcommand: fit, then test the best checkpoint. DDP re-executes this script
    # with the same argv, so every rank takes the same decision.
    fit_then_test = not argv or argv[0] not in SUBCOMMANDS
    if fit_then_test:
        argv.insert(0, "fit")
    predicting = argv[0] == "predict"
    argv = expand_aliases(argv)
    defaults = {"default_config_files": [str(DEFAULT_CONFIG)], "epilog": ALIAS_HELP}
    try:
        cli = TemplateCLI(
            args=argv,
            parser_kwargs={sub: defaults for sub in SUBCOMMANDS},
            # Predict writes no logs. validate/test on a run's checkpoint log into that run's
            # folder (resolve_last_checkpoint): their config goes to <stage>_config.yaml, so the
            # config.yaml of the fit that made the checkpoint stays as it was.
            save_config_callback=None if predicting else SaveConfigCallback,
            save_config_kwargs={"overwrite": True, "config_filename": "config.yaml"
                                if argv[0] == "fit" else f"{argv[0]}_config.yaml"},
            # Always added, whatever the config: the metadata is what models.export needs, the
            # RNG states make a resumed run draw what the uninterrupted one would have, a NaN
            # loss stops the run before it reaches the weights, and a failing DDP rank is named
            # and takes the others down with it.
            trainer_defaults={"callbacks": [RunSummary(), PreprocessingMetadata(), RNGState(),
                                            StopOnNonFiniteLoss(), ReportRankFailure()]},
            seed_everything_default=0,
            auto_configure_optimizers=False,
        )
    except DataError as error:
        # Raised while the datamodule sets up, before any training step or run folder: the
        # message names the file/row/option, a traceback into Lightning would only hide it.
        sys.stderr.write(f"train.py: error: {error}\n")
        sys.exit(2)
    except NonFiniteLossError as error:
        # The weights never saw the bad step and no checkpoint was written for it: say where it
        # happened, without a traceback through Lightning's loops.
        sys.stderr.write(f"train.py: error: {error}\n")
        sys.exit(1)
    except SIGTERMException:
        # Pre-empted: Lightning finished the batch, the checkpoint callback saved last.ckpt.
        # Exit 143 (128 + SIGTERM) like a killed process, so a scheduler requeues the job
        # rather than counting it as done (SIGTERMException alone would exit with 0).
        sys.stderr.write("train.py: stopped by SIGTERM; resume with --ckpt_path last\n")
        sys.exit(143)
    trainer = cli.trainer
    if fit_then_test and not trainer.interrupted and trainer.state.finished:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None,
                     weights_only=True)
    for callback in trainer.callbacks:
        # Predict has no metrics, and its summary.json would replace the training run's.
        if isinstance(callback, RunSummary) and not predicting:
            callback.report(trainer)
        if isinstance(callback, PredictionCSVWriter) and callback.report:
            print(callback.report)  # after the progress bar, only on rank 0 (which wrote it)
    return cli


if __name__ == "__main__":
    main()
