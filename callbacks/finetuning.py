"""Train the head of a pretrained network first, then the whole network at a lower LR."""

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim import Optimizer

from models.optim import no_weight_decay_names
from models.param_groups import param_groups_weight_decay

# Per-group lists that PyTorch schedulers keep, and how a new group's entry is made from the
# first group's: learning rates scale with the group, the rest is shared.
_SCALED_LISTS = ("base_lrs", "max_lrs")
_COPIED_LISTS = ("min_lrs", "lr_lambdas")


class FreezeBackbone(BaseFinetuning):
    """Freeze everything but the head, then unfreeze it at ``unfreeze_at_epoch``.

    Lightning's ``BackboneFinetuning`` needs a ``backbone`` attribute holding everything but the
    head, puts the unfrozen parameters in one group (so biases and norms get weight decay),
    schedules their LR per epoch on its own (doubling it each epoch by default) and sets it on
    the optimizer's *last* group only. This callback keeps its freeze/unfreeze machinery
    (``BaseFinetuning``: param-group bookkeeping that survives a resume) and changes the rest:

    - the head is a submodule named by ``head`` (default ``net.head``: ``SmallCNN``, ``MLP``
      and ``TorchvisionBackbone`` all have one); the backbone is every other parameter;
    - the unfrozen parameters join as two groups split like ``ImageClassifier`` splits its own
      (weights decayed; biases, norms and ``no_weight_decay`` names not);
    - their LR is ``backbone_lr_ratio`` x the head's LR at that moment, and the run's scheduler
      is extended to them, so from then on they follow the same schedule (OneCycle, the
      warmup schedules, StepLR, ReduceLROnPlateau) at that ratio. A scheduler left alone would
      either skip the new groups (LambdaLR-style ``base_lrs`` lists) or fail on them
      (OneCycleLR reads ``max_lr`` from every group).

    The model is frozen before ``configure_optimizers`` (a module that builds its layers in
    ``configure_model``, which Lightning requires to be idempotent, is built first), so frozen
    parameters never enter the optimizer. ``train_bn`` keeps BatchNorm layers trainable
    (parameters and running statistics) while the rest is frozen, as Lightning's default does:
    they adapt to the new data at little cost. ``train_bn: false`` freezes them too. After the
    unfreeze everything trains, BatchNorm included.
    """

    def __init__(
        self,
        unfreeze_at_epoch: int = 1,
        backbone_lr_ratio: float = 0.1,
        head: str = "net.head",
        train_bn: bool = True,
    ) -> None:
        super().__init__()
        if unfreeze_at_epoch < 0 or backbone_lr_ratio <= 0:
            raise ValueError("FreezeBackbone: unfreeze_at_epoch must be >= 0 and "
                             "backbone_lr_ratio > 0")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.backbone_lr_ratio = backbone_lr_ratio
        self.head = head
        self.train_bn = train_bn
        self._unfrozen = False
        # True from loading a checkpoint's state for this callback until that fit starts.
        self.restored = False

    # -- which modules -------------------------------------------------------------------------
    def backbone_modules(self, pl_module: LightningModule) -> list[nn.Module]:
        """The modules that own parameters, outside the head."""
        try:
            head = pl_module.get_submodule(self.head)
        except AttributeError:
            raise ValueError(f"FreezeBackbone: {type(pl_module).__name__} has no submodule "
                             f"{self.head!r}; set head to the classifier layer's name") from None
        in_head = {id(m) for m in head.modules()}
        return [m for m in self.flatten_modules(pl_module)
                if id(m) not in in_head and any(True for _ in m.parameters(recurse=False))]

    # -- BaseFinetuning hooks ------------------------------------------------------------------
    def freeze_before_training(self, pl_module: LightningModule) -> None:
        if callable(getattr(pl_module, "configure_model", None)):
            pl_module.configure_model()  # a module that builds its layers there
        self.freeze(self.backbone_modules(pl_module), train_bn=self.train_bn)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.restored and self._unfrozen:
            # Resumed after the unfreeze epoch: setup froze the backbone again and the epoch
            # that unfreezes it will not come back; BaseFinetuning restores the groups.
            self.make_trainable(self.backbone_modules(pl_module))
        self.restored = False
        super().on_fit_start(trainer, pl_module)

    def finetune_function(self, pl_module: LightningModule, epoch: int,
                          optimizer: Optimizer) -> None:
        if epoch == self.unfreeze_at_epoch and not self._unfrozen:
            self.unfreeze(pl_module, optimizer)
        # Every epoch, not only at the unfreeze: a resumed run's fresh scheduler objects must
        # learn about the restored groups too. Does nothing when they already know them.
        for config in pl_module.trainer.lr_scheduler_configs:
            if config.scheduler.optimizer is optimizer:
                extend_scheduler(config.scheduler)

    def unfreeze(self, pl_module: LightningModule, optimizer: Optimizer) -> None:
        modules = self.backbone_modules(pl_module)
        self.make_trainable(modules)
        # BatchNorm included even with train_bn=False (Lightning would make it trainable but
        # leave it out of the optimizer, computing gradients it never applies).
        wanted = {id(p) for p in self.filter_params(modules, train_bn=True)}
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        lr = optimizer.param_groups[0]["lr"] * self.backbone_lr_ratio
        for group in self._decay_groups(pl_module):
            params = [p for p in group["params"] if id(p) in wanted and id(p) not in present]
            if params:
                optimizer.add_param_group({**group, "params": params, "lr": lr,
                                           "lr_ratio": self.backbone_lr_ratio})
        self._unfrozen = True
        rank_zero_info(f"FreezeBackbone: epoch {self.unfreeze_at_epoch}: backbone unfrozen, "
                       f"lr {lr:.3g} ({self.backbone_lr_ratio} x the head's)")

    @staticmethod
    def _decay_groups(pl_module: LightningModule) -> list[dict[str, Any]]:
        """The weight-decay split ``models.optim.optimizers_from_config`` makes: the module's
        ``no_weight_decay`` option (if it has one) and every submodule's own list."""
        hparams = getattr(pl_module, "hparams", {})
        return param_groups_weight_decay(
            pl_module, no_weight_decay_names(pl_module, hparams.get("no_weight_decay", ())),
            exclude_bias_and_norm=not hparams.get("weight_decay_norm_and_bias", False),
        )

    # -- state: BaseFinetuning's group bookkeeping, plus whether the unfreeze happened ---------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "unfrozen": self._unfrozen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._unfrozen = bool(state_dict.get("unfrozen", False))
        self.restored = True
        super().load_state_dict(state_dict)


def extend_scheduler(scheduler: Any) -> None:
    """Give a scheduler entries for optimizer groups added after it was built.

    A new group's entries are the first group's, learning rates scaled by the group's
    ``lr_ratio``; keys schedulers store in the groups themselves (OneCycleLR's ``initial_lr``,
    ``max_lr``, ``min_lr``, momentum bounds) likewise.
    """
    groups = scheduler.optimizer.param_groups
    defaults = scheduler.optimizer.defaults
    first = groups[0]
    for group in groups[1:]:
        ratio = group.get("lr_ratio", 1.0)
        for key, value in first.items():
            if key not in group and key not in defaults and key != "params":
                group[key] = value * ratio if key.endswith("lr") else value
    for name in (*_SCALED_LISTS, *_COPIED_LISTS):
        values = getattr(scheduler, name, None)
        if not isinstance(values, list) or not values:
            continue
        for group in groups[len(values):]:
            scale = group.get("lr_ratio", 1.0) if name in _SCALED_LISTS else 1.0
            values.append(values[0] * scale if scale != 1.0 else values[0])
    if isinstance(getattr(scheduler, "_last_lr", None), list):
        scheduler._last_lr = [group["lr"] for group in groups]
