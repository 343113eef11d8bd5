"""Reading ``--ckpt_path``: which file ``last`` means, one line for a file that is not a
checkpoint, a refusal, before anything is imported, of one that names code outside what the
run trusts, and the classes a checkpoint was trained on. ``train.py`` imports this module only
when a command gives a checkpoint or predicts.

Why: ``torch.load(weights_only=True)`` runs no code, but what the file *names* does. A
checkpoint of LightningCLI stores the model's class (``_class_path``), the nested ``class_path``
of its arguments (a backbone, an optimizer) and an ``_instantiator``; ``train.py --ckpt_path``
(LightningCLI puts the checkpoint's class and arguments into the config) and
``models.export`` import and build them. Lightning 2.6.6 checks ``_instantiator`` and
``_class_path`` in ``load_from_checkpoint`` (CVE-2026-58659), not in LightningCLI's config
step nor in nested class paths: this module covers both, for every stage.
"""

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from errors import DataError

# Packages a checkpoint may name classes from: the libraries the template builds on and its own
# packages. A run also trusts the packages of the model and data its own config names.
TRUSTED_PACKAGES = ("torch", "torchvision", "torchmetrics", "lightning", "pytorch_lightning",
                    "timm", "models", "datamodules", "callbacks")
LIGHTNING_CKPT_NAMES = ("best", "hpc", "registry")  # --ckpt_path values Lightning resolves
# The one instantiator LightningCLI records (lightning.pytorch.cli, `_instantiator`).
TRUSTED_INSTANTIATORS = ("lightning.pytorch.cli.instantiate_module",
                         "pytorch_lightning.cli.instantiate_module")


def check_ckpt_path(config: Any, stage: str, configured_model: str | None) -> None:
    """What train.py does with ``--ckpt_path`` before LightningCLI reads the file: ``last``
    resolved, then the file read and refused if it names code outside what the run trusts, or
    (``fit``) is another run's. LightningCLI replaces the model's class and arguments by the
    checkpoint's next, so nothing the file names is imported before these checks."""
    resolve_last_checkpoint(config, stage)
    ckpt_path = config.get("ckpt_path")
    if not ckpt_path or ckpt_path in LIGHTNING_CKPT_NAMES:
        return
    checkpoint = read_checkpoint(ckpt_path)
    data = (config.get("data") or {}).get("class_path")
    refuse_untrusted(checkpoint, ckpt_path, trusted=[*package_of(configured_model),
                                                     *package_of(data)])
    if stage == "fit":
        refuse_resuming_another_run(checkpoint, ckpt_path, config)
        refuse_resuming_a_finished_run(checkpoint, ckpt_path, config)


def use_checkpoint(config: Any, stage: str | None, configured_model: str | None) -> None:
    """What train.py does once LightningCLI has put the checkpoint's model into the config:
    says so where it replaced the configured one; ``predict`` takes the classes from it."""
    ckpt_path = config.get("ckpt_path")
    used = (config.get("model") or {}).get("class_path")
    if configured_model and used and used != configured_model:
        rank_zero_info(f"{stage}: the checkpoint holds a {used}; it is used instead of the "
                       f"configured {configured_model}")
    if stage == "predict":
        if not ckpt_path:
            raise DataError("predict needs --ckpt_path: a checkpoint of the trained model")
        names = class_names_in(ckpt_path)  # not the classes of the data to predict
        if names and "class_names" in (config.data.get("init_args") or {}):
            config.data.init_args.class_names = names


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint as ``torch.load(weights_only=True)`` gives it; a missing, empty,
    truncated or non-checkpoint file is a one-line :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # EOFError, RuntimeError, OSError, pickle errors, KeyError ...
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:160]
        raise DataError(f"{path} is not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise DataError(f"{path} is not a Lightning checkpoint (no state_dict): give a .ckpt "
                        "written by train.py or Trainer.save_checkpoint")
    return checkpoint


def refuse_untrusted(checkpoint: dict[str, Any], path: str | Path,
                     trusted: Iterable[str] = ()) -> None:
    """One line (a :class:`DataError`) when the checkpoint's hyperparameters name an
    instantiator or a class outside :data:`TRUSTED_PACKAGES` and ``trusted`` (more package or
    module names); nothing is imported."""
    packages = (*TRUSTED_PACKAGES, *trusted)
    # The model's hyperparameters are what LightningCLI and load_from_checkpoint build; the
    # datamodule's are only read as data (export's metadata).
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict):
        return
    instantiator = hparams.get("_instantiator")
    if instantiator is not None and instantiator not in TRUSTED_INSTANTIATORS:
        raise DataError(f"{path}: refused, it asks to run {instantiator!r} to build the model "
                        "(only LightningCLI's own instantiator is trusted)")
    for class_path in class_paths_in(hparams):
        if not is_trusted(class_path, packages):
            raise DataError(
                f"{path}: refused, it names the class {class_path!r}, outside the packages "
                f"trusted ({', '.join(packages)}); if the checkpoint is yours, name its model "
                "in the config (--model CLASS) or, for models.export, pass --trust "
                f"{str(class_path).split('.')[0]}")


def class_paths_in(value: Any) -> Iterator[Any]:
    """Every ``_class_path`` and nested ``class_path`` value in a hyperparameter tree."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("_class_path", "class_path"):
                yield item
            else:
                yield from class_paths_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from class_paths_in(item)


def is_trusted(class_path: Any, packages: Iterable[str]) -> bool:
    """Whether ``class_path`` (a dotted string) lies in one of ``packages`` (``a`` covers
    ``a.b.C``; ``a.b`` covers ``a.b.C``)."""
    if not isinstance(class_path, str):
        return False
    return any(class_path == p or class_path.startswith(p + ".") for p in packages)


def package_of(class_path: str | None) -> list[str]:
    """The top-level package of a class the run's own config names (its code is trusted)."""
    return [class_path.split(".")[0]] if class_path and "." in class_path else []


def refuse_resuming_another_run(checkpoint: dict[str, Any], path: str | Path,
                                config: Any) -> None:
    """``fit --ckpt_path`` resumes a run: the checkpoint must hold the model class, data class
    and task this run configures. LightningCLI would otherwise take the model from the file and
    carry on, on other data, as if nothing differed."""
    hparams = checkpoint.get("hyper_parameters") or {}
    data_hparams = checkpoint.get("datamodule_hyper_parameters") or {}
    model, data = config.get("model") or {}, config.get("data") or {}
    data_args = data.get("init_args") or {}
    differences = [
        f"{what} {saved} (this run: {configured})" for what, saved, configured in (
            ("model", hparams.get("_class_path"), model.get("class_path")),
            ("data", data_hparams.get("_class_path"), data.get("class_path")),
            ("task", data_hparams.get("task", hparams.get("task")), data_args.get("task")))
        if saved is not None and configured is not None and saved != configured]
    if differences:
        raise DataError(f"{path} is another run's checkpoint: {'; '.join(differences)}. "
                        "Resuming needs the same model, data and task; to start a new run "
                        "from its weights, see docs/logs_and_checkpoints.md")


def refuse_resuming_a_finished_run(checkpoint: dict[str, Any], path: str | Path,
                                   config: Any) -> None:
    """A checkpoint whose fit already did ``max_epochs`` (or ``max_steps``) has nothing left to
    train: Lightning would only test it again and rewrite the run's summary and config."""
    trainer = config.get("trainer") or {}
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    epochs = (((checkpoint.get("loops") or {}).get("fit_loop") or {}).get("epoch_progress")
              or {}).get("current", {}).get("processed")
    steps = checkpoint.get("global_step")
    done = None
    if isinstance(epochs, int) and max_epochs not in (None, -1) and epochs >= max_epochs:
        done = f"{epochs} of max_epochs {max_epochs}"
    elif isinstance(steps, int) and max_steps not in (None, -1) and steps >= max_steps:
        done = f"{steps} of max_steps {max_steps}"
    if done:
        raise DataError(f"{path} is a finished run ({done} done): nothing to train; raise "
                        f"--max_epochs (or --max_steps) to train on, or test it with "
                        f"`train.py test --ckpt_path {path}`")


def resolve_last_checkpoint(config: Any, stage: str = "fit") -> None:
    """Turn ``ckpt_path: last`` into the newest ``last.ckpt`` of this logger's runs and make the
    logger write into that run's version folder, so a resumed run continues the same logs and
    checkpoints instead of starting a new version that has no ``last.ckpt``. With no such file,
    ``fit`` starts from scratch (said in one line); the other stages are refused: they would
    evaluate an untrained model."""
    logger = config.get("trainer.logger")
    init_args = getattr(logger, "init_args", None)
    if init_args is None or "save_dir" not in init_args:
        return
    runs = Path(init_args.save_dir) / (init_args.get("name") or "")
    ckpt_path = config.get("ckpt_path")
    if ckpt_path == "last":
        candidates = sorted(runs.glob("*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates and stage != "fit":
            raise DataError(f"--ckpt_path last: no last.ckpt under {runs}: nothing to {stage}; "
                            "train first or give the checkpoint's path")
        if not candidates:
            rank_zero_warn(f"--ckpt_path last: no last.ckpt under {runs}; starting from scratch.")
            config["ckpt_path"] = None
            return
        ckpt_path = str(candidates[-1])
        config["ckpt_path"] = ckpt_path
    if ckpt_path and init_args.get("version") is None:
        run_dir = Path(ckpt_path).resolve().parent.parent
        if run_dir.parent == runs.resolve():
            init_args["version"] = run_dir.name


def class_names_in(ckpt_path: str | Path) -> list[str] | None:
    """The class names a checkpoint was trained on: the model's ``class_names``
    hyperparameter, else the datamodule state saved in it (any entry with ``class_names``)."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    names = (checkpoint.get("hyper_parameters") or {}).get("class_names")
    for value in checkpoint.values():
        if not names and isinstance(value, dict) and isinstance(value.get("class_names"), list):
            names = value["class_names"]
    return [str(n) for n in names] if names else None
