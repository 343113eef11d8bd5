"""The optimizer and LR schedule a config describes (LightningCLI's ``OptimizerCallable`` and
``LRSchedulerCallable``), built for any LightningModule in ``configure_optimizers``: the
optimizer needs the parameter groups, the schedule the run's length, which only the trainer
knows. How your module uses them: docs/own_module.md."""

import inspect
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Literal

from lightning.pytorch import LightningModule
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from models.param_groups import param_groups_weight_decay

# The length each schedule was built for, by schedule: not an attribute of the schedule, which a
# resumed run's ``load_state_dict`` overwrites with the checkpoint's.
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
    """What ``configure_optimizers`` returns: ``optimizer`` called with the weight-decay groups
    (``models.param_groups``; ``no_weight_decay`` names more parameters, or prefixes ending in
    ``.``, to leave undecayed); ``scheduler`` (None: the optimizer alone) called with it and,
    where it takes ``total_steps`` and the config left it unset (OneCycleLR), with
    ``trainer.estimated_stepping_batches`` (``max_epochs`` for ``interval="epoch"``): right for
    any devices, batch size, accumulation or limits. ``ReduceLROnPlateau`` watches ``monitor``."""
    groups = param_groups_weight_decay(module, no_weight_decay_names(module, no_weight_decay),
                                       exclude_bias_and_norm=not weight_decay_norm_and_bias)
    built = optimizer(groups)
    if scheduler is None:
        return built
    length = _total_steps(module, scheduler, interval)
    schedule = scheduler(built, **length)
    if length:
        _EXPECTED_TOTAL[schedule] = length["total_steps"]
    config: dict[str, Any] = {"scheduler": schedule, "interval": interval}
    if isinstance(schedule, ReduceLROnPlateau):
        config["monitor"] = monitor
    return {"optimizer": built, "lr_scheduler": config}


def optimizers_from_hparams(module: LightningModule, optimizer: Callable[..., Optimizer],
                            scheduler: Callable[..., Any] | None) -> Optimizer | dict[str, Any]:
    """:func:`optimizers_from_config` with the options the template's modules keep in hparams."""
    hparams = module.hparams
    return optimizers_from_config(
        module, optimizer, scheduler, interval=hparams["scheduler_interval"],
        monitor=hparams["scheduler_monitor"], no_weight_decay=hparams["no_weight_decay"],
        weight_decay_norm_and_bias=hparams["weight_decay_norm_and_bias"])


def check_resumed_schedule(module: LightningModule) -> None:
    """From ``on_train_start``: refuse a resumed run whose length no longer matches the
    ``total_steps`` its checkpoint's schedule state brings back (OneCycleLR would fail mid-run,
    others sit at their final LR)."""
    for config in module.trainer.lr_scheduler_configs:
        expected = _EXPECTED_TOTAL.get(config.scheduler)
        loaded = getattr(config.scheduler, "total_steps", None)
        if expected is not None and loaded is not None and loaded != expected:
            from models.schedule_length import resumed_length_differs

            raise resumed_length_differs(config.scheduler, loaded, expected)


def no_weight_decay_names(module: nn.Module, extra: Iterable[str] = ()) -> list[str]:
    """``extra`` plus, with their prefix, the names each submodule's ``no_weight_decay()``
    lists (timm's convention for positional embeddings, class tokens)."""
    names = list(extra)
    for prefix, submodule in module.named_modules():
        listed = getattr(submodule, "no_weight_decay", None)
        if callable(listed):
            names += [f"{prefix}.{name}" if prefix else name for name in listed()]
    return names


def unset_argument(factory: Callable[..., Any], name: str) -> bool:
    """Whether the config callable ``factory`` takes ``name`` and was not given it:
    jsonargparse's ``functools.partial`` holds every init argument, unset ones as None."""
    keywords = getattr(factory, "keywords", None)
    if keywords is not None and name in keywords:
        return keywords[name] is None
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _total_steps(module: LightningModule, factory: Callable[..., Any],
                 interval: str) -> dict[str, int]:
    """``total_steps`` from the trainer, for a schedule that takes it and was not given it."""
    if not unset_argument(factory, "total_steps"):
        return {}
    trainer = module.trainer
    total = trainer.max_epochs if interval == "epoch" else trainer.estimated_stepping_batches
    if total is None or total == float("inf") or total < 1:
        from models.schedule_length import unknown_length

        raise unknown_length(factory, total)
    return {"total_steps": int(total)}
