"""Workarounds for upstream behaviour, in one place. Each names what it works around and has a
test in ``tests/test_workarounds.py`` that fails once it is no longer needed; delete both then.
``train.py`` applies them with :func:`apply`.
"""

from __future__ import annotations

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
    """Keep only the linked hyperparameters the model's ``__init__`` takes.

    Works around: LightningCLI records every ``apply_on="instantiate"`` link aimed at the model
    in its saved hyperparameters (``_InstantiatorFn``), also the links jsonargparse skipped
    because the class has no such argument. A module without ``class_names`` then has
    ``class_names`` in its checkpoint, and ``predict --ckpt_path`` (LightningCLI parses the
    checkpoint's hyperparameters) or ``load_from_checkpoint`` call it with an argument it does
    not take.
    """
    hparams = getattr(model, "hparams", None)
    if not hparams:
        return
    parameters = inspect.signature(type(model).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for key in linked:
        if key in hparams and key not in parameters:
            del hparams[key]


def destroy_the_process_group() -> None:
    """End the command the way PyTorch asks every process to: destroy the process group.

    Works around: Lightning registers that for the end of the process with NCCL only
    (``lightning.fabric.utilities.distributed``). With gloo (CPU DDP) a rank that exits with
    the group alive can abort in interpreter finalization, "terminate called without an active
    exception" (Gloo's worker threads still hold tensors; pytorch/pytorch#179291), and torchrun
    then reports a run that finished as failed: seen on a loaded 2-core machine. Called after a
    command succeeded only: a rank that failed may leave others inside a collective.
    """
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def read_whole_numbers_as_batch_counts() -> None:
    """``--trainer.limit_train_batches=1`` must mean one batch, not 100 % of them.

    Works around: jsonargparse tries a union's members in order, and ``typing`` caches unions
    whose members compare equal in any order. The Trainer annotates ``limit_*_batches``,
    ``overfit_batches`` and ``val_check_interval`` ``Union[int, float]`` (int: batches, float:
    a fraction), but where some other import built ``Union[float, int]`` first (seen with torch
    2.11 on Python 3.12), that cached, float-first union is the Trainer's annotation and 1
    parses as 1.0, every batch. Every Trainer annotation holding int and float is rebuilt with
    int first (``int | float`` unions are not cached); for options where both mean the same,
    e.g. ``gradient_clip_val``, that changes nothing.
    """
    # One dict: functools.wraps gives the Trainer's env-defaults wrapper the same object.
    annotations = inspect.unwrap(Trainer.__init__).__annotations__
    for name, hint in annotations.items():
        members = typing.get_args(hint)
        if (typing.get_origin(hint) in (typing.Union, types.UnionType)
                and int in members and float in members and members[0] is not int):
            int_first = (int, *(m for m in members if m is not int))
            annotations[name] = functools.reduce(operator.or_, int_first)


def quiet_messages_users_cannot_act_on() -> None:
    """Works around four messages every run printed that are about other libraries' code:
    torch 2.14 deprecates ``isinstance(..., LeafSpec)``, which Lightning's pytree helper uses;
    Lightning advertises its cloud logger (litlogger) whenever another logger is used;
    jsonargparse's deprecation notices for calls LightningCLI makes; and torchdata 0.11's
    ``StatefulDataLoader`` calls ``torch.set_vital``, deprecated in torch 2.14."""
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if drop_cloud_logger_tip not in rank_zero_log.filters:
        rank_zero_log.addFilter(drop_cloud_logger_tip)


def drop_cloud_logger_tip(record: logging.LogRecord) -> bool:
    return "litlogger" not in str(record.msg)
