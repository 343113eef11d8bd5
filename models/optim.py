"""The optimizer and LR schedule a config describes, built for any LightningModule.

LightningCLI hands a module two callables (``OptimizerCallable``, ``LRSchedulerCallable``)
instead of objects, because neither can be built in ``__init__``: the optimizer needs the
parameter groups, the schedule the run's length, which only the trainer knows. The template's
modules and yours finish the job the same way::

    from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
    from models.optim import check_resumed_schedule, optimizers_from_config

    class MyModule(LightningModule):
        def __init__(self, optimizer: OptimizerCallable = torch.optim.AdamW,
                     scheduler: LRSchedulerCallable | None = None) -> None:
            super().__init__()
            self.optimizer, self.scheduler = optimizer, scheduler

        def configure_optimizers(self):
            return optimizers_from_config(self, self.optimizer, self.scheduler)

        def on_train_start(self) -> None:
            check_resumed_schedule(self)  # optional: a clear error instead of one mid-run

With ``--model.init_args.scheduler=torch.optim.lr_scheduler.OneCycleLR`` and
``...scheduler.init_args.max_lr=0.01`` in the config, OneCycle is then sized for any devices,
accumulation, limits or ``max_steps``.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Literal

from lightning.pytorch import LightningModule
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from errors import DataError
from models.param_groups import param_groups_weight_decay

# The length each schedule was built for in this process, by schedule object. Not an attribute
# of the schedule: a resumed run's ``load_state_dict`` overwrites those with the checkpoint's.
_EXPECTED_TOTAL: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def optimizers_from_config(
    module: LightningModule,
    optimizer: Callable[..., Optimizer],
    scheduler: Callable[..., Any] | None = None,
    *,
    interval: Literal["step", "epoch"] = "step",
    monitor: str = "val/loss",
    no_weight_decay: Iterable[str] = (),
    weight_decay_norm_and_bias: bool = False,
) -> Optimizer | dict[str, Any]:
    """What ``configure_optimizers`` returns for the config's optimizer and schedule.

    * The optimizer gets two parameter groups (``models.param_groups``): weights with the
      config's ``weight_decay``, and biases, normalisation parameters, 1-D parameters and the
      names from :func:`no_weight_decay_names` with none. Decaying those hurts and regularises
      nothing. ``weight_decay_norm_and_bias=True`` decays everything (to reproduce papers).
    * A schedule that takes ``total_steps`` and was not given one in the config (OneCycleLR,
      ``models.schedulers``) gets ``trainer.estimated_stepping_batches`` (``trainer.max_epochs``
      when ``interval="epoch"``): a hand-computed number is wrong as soon as the devices, the
      batch size, the accumulation or a limit change.
    * ``ReduceLROnPlateau`` watches ``monitor``.

    Args:
        module: the LightningModule being fitted (attached to its trainer).
        optimizer: called with the parameter groups.
        scheduler: called with the optimizer (and ``total_steps``); None: no schedule, the
            optimizer alone is returned.
        interval: ``step`` steps the schedule after every optimizer step, ``epoch`` after
            every epoch (StepLR, MultiStepLR).
        monitor: the logged metric ReduceLROnPlateau-style schedules watch.
        no_weight_decay: parameter names (or prefixes ending in ``.``) that get no decay.
        weight_decay_norm_and_bias: decay biases and normalisation parameters too.
    """
    groups = param_groups_weight_decay(module, no_weight_decay_names(module, no_weight_decay),
                                       exclude_bias_and_norm=not weight_decay_norm_and_bias)
    built = optimizer(groups)
    if scheduler is None:
        return built
    length = _schedule_length_kwargs(module, scheduler, interval)
    schedule = scheduler(built, **length)
    if length:
        _EXPECTED_TOTAL[schedule] = length["total_steps"]
    config: dict[str, Any] = {"scheduler": schedule, "interval": interval}
    if isinstance(schedule, ReduceLROnPlateau):
        config["monitor"] = monitor
    return {"optimizer": built, "lr_scheduler": config}


def optimizers_from_hparams(module: LightningModule, optimizer: Callable[..., Optimizer],
                            scheduler: Callable[..., Any] | None) -> Optimizer | dict[str, Any]:
    """:func:`optimizers_from_config` with the options the template's modules keep in their
    hparams: ``scheduler_interval``, ``scheduler_monitor``, ``no_weight_decay`` and
    ``weight_decay_norm_and_bias``."""
    hparams = module.hparams
    return optimizers_from_config(
        module, optimizer, scheduler, interval=hparams["scheduler_interval"],
        monitor=hparams["scheduler_monitor"], no_weight_decay=hparams["no_weight_decay"],
        weight_decay_norm_and_bias=hparams["weight_decay_norm_and_bias"])


def check_resumed_schedule(module: LightningModule) -> None:
    """Refuse a resumed run whose length no longer matches its schedule's; call it from
    ``on_train_start`` (after Lightning has loaded the checkpoint's schedule state).

    The checkpoint's schedule state carries its ``total_steps``, which wins over the one
    :func:`optimizers_from_config` computed. If the run got longer (a larger ``max_epochs``,
    fewer devices), OneCycleLR would fail mid-run ("Tried to step N times"), others would sit
    at their final LR; this says so before the first step, and what to do instead.
    """
    for config in module.trainer.lr_scheduler_configs:
        expected = _EXPECTED_TOTAL.get(config.scheduler)
        loaded = getattr(config.scheduler, "total_steps", None)
        if expected is not None and loaded is not None and loaded != expected:
            raise DataError(
                f"the checkpoint's {type(config.scheduler).__name__} spans {loaded} steps but "
                f"this run has {expected} (max_epochs, max_steps, devices, batch size or "
                "accumulation changed): resume with the original settings, or start a new "
                "run from its weights (callbacks.initial_weights.InitialWeights)"
            )


def no_weight_decay_names(module: nn.Module, extra: Iterable[str] = ()) -> list[str]:
    """``extra`` plus what every submodule's ``no_weight_decay()`` lists, as full names.

    timm's convention: a network knows which of its parameters (positional embeddings, class
    tokens) must not be decayed and says so in a ``no_weight_decay()`` method, with names
    relative to itself; here they get the submodule's prefix (``net.pos_embed``).
    """
    names = list(extra)
    for prefix, submodule in module.named_modules():
        listed = getattr(submodule, "no_weight_decay", None)
        if callable(listed):
            names += [f"{prefix}.{name}" if prefix else name for name in listed()]
    return names


def _schedule_length_kwargs(module: LightningModule, factory: Callable[..., Any],
                            interval: str) -> dict[str, int]:
    """``total_steps`` for schedules that need it, from the trainer (devices, accumulation
    and limits included), never from a hand-computed config value."""
    if not _needs_total_steps(factory):
        return {}
    trainer = module.trainer
    total = trainer.max_epochs if interval == "epoch" else trainer.estimated_stepping_batches
    unsized = total is None or total == float("inf") or total < 1
    if unsized:
        name = getattr(_target_class(factory), "__name__", "The scheduler")
        raise ValueError(
            f"{name} needs a finite number of steps but training length is {total}: "
            "set trainer.max_epochs or trainer.max_steps."
        )
    return {"total_steps": int(total)}


def _target_class(factory: Callable[..., Any]) -> type | None:
    """The class behind a config callable: itself, or the class jsonargparse's
    ``functools.partial`` wraps (as ``func``, or among ``args`` in jsonargparse >= 4.40)."""
    if isinstance(factory, type):
        return factory
    candidates = [getattr(factory, "func", None), *getattr(factory, "args", ())]
    return next((c for c in candidates if isinstance(c, type)), None)


def _needs_total_steps(factory: Callable[..., Any]) -> bool:
    """True if the scheduler takes ``total_steps`` and the config left it unset.

    jsonargparse hands over a ``functools.partial`` whose keywords hold every init argument
    (unset ones as None), so an explicit ``total_steps`` in the config is respected.
    """
    keywords = getattr(factory, "keywords", None)
    if keywords is not None and "total_steps" in keywords:
        return keywords["total_steps"] is None
    try:
        return "total_steps" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
