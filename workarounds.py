"""Workarounds for upstream behaviour. Each says what it works around; its test in
``tests/test_workarounds.py`` fails once upstream changes: delete both then."""

import functools
import inspect
import logging
import operator
import os
import types
import typing
import warnings
from typing import Any

from lightning.pytorch import Trainer


def apply() -> None:
    read_whole_numbers_as_batch_counts()
    quiet_messages_users_cannot_act_on()


def drop_link_values_the_model_does_not_take(model: Any, linked: tuple[str, ...]) -> None:
    """LightningCLI records every ``apply_on="instantiate"`` link in the model's saved
    hyperparameters (``_InstantiatorFn``), also those jsonargparse skipped because ``__init__``
    lacks the argument; ``predict --ckpt_path`` and ``load_from_checkpoint`` would then pass
    it an argument it does not take. Keep only the linked ones ``__init__`` takes."""
    hparams = getattr(model, "hparams", None)
    parameters = inspect.signature(type(model).__init__).parameters
    if not hparams or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    for key in linked:
        if key in hparams and key not in parameters:
            del hparams[key]


def destroy_the_process_group() -> None:
    """Lightning destroys the process group at exit for NCCL only: with gloo (CPU DDP) a rank
    can abort in interpreter finalization ("terminate called without an active exception",
    pytorch/pytorch#179291) and torchrun reports the finished run as failed. Called after a
    command succeeded only: a failed rank may leave others inside a collective."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def read_whole_numbers_as_batch_counts() -> None:
    """``--trainer.limit_train_batches=1`` must mean one batch, not 100 %.

    jsonargparse tries a union's members in order, and ``typing`` caches unions equal in any
    order: where another import built ``Union[float, int]`` first (torch 2.11, Python 3.12),
    the Trainer's ``Union[int, float]`` hints (``limit_*_batches``, ``overfit_batches``,
    ``val_check_interval``) are that float-first union and 1 parses as 1.0. Every Trainer hint
    holding int and float is rebuilt int first (``int | float`` is not cached); where int and
    float mean the same (``gradient_clip_val``) this changes nothing.
    """
    # One dict: functools.wraps gives the Trainer's env-defaults wrapper the same object.
    annotations = inspect.unwrap(Trainer.__init__).__annotations__
    for name, hint in annotations.items():
        members = typing.get_args(hint)
        if (typing.get_origin(hint) in (typing.Union, types.UnionType)
                and int in members and float in members and members[0] is not int):
            annotations[name] = functools.reduce(
                operator.or_, (int, *(m for m in members if m is not int)))


def quiet_messages_users_cannot_act_on() -> None:
    """Messages every run printed about other libraries' code: torch 2.14 deprecates
    ``isinstance(..., LeafSpec)`` (Lightning's pytree helper) and ``torch.set_vital``
    (torchdata 0.11's ``StatefulDataLoader``); Lightning advertises litlogger whenever
    another logger is used; jsonargparse's deprecation notices for calls LightningCLI makes."""
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if drop_cloud_logger_tip not in rank_zero_log.filters:
        rank_zero_log.addFilter(drop_cloud_logger_tip)


def drop_cloud_logger_tip(record: logging.LogRecord) -> bool:
    return "litlogger" not in str(record.msg)
