"""The template's module for ``task: regression``: one or more numbers per input.

The targets arrive in the table's own units (a price in dollars, a progression score of 25 to
346), which make poor learning targets: their scale sets the size of the gradients, so one
learning rate does not suit two data sets, and a network with a zero-mean initial output starts
far off. So the network learns *standardised* targets, ``(y - mean) / std`` with the training
split's statistics (linked from the data), and the loss is computed there; ``forward`` maps its
output back, so predictions, metrics, ``predict`` and an exported model all speak the original
units, and ``load_from_checkpoint(path)`` needs nothing else (the statistics are
hyperparameters).
"""

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection, R2Score

from models.classifier import build_backbone, check_task, forget_weights_path
from models.mlp import MLP
from models.optim import check_resumed_schedule, optimizers_from_hparams
from models.small_cnn import SmallCNN

Stage = Literal["train", "val", "test"]
LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}


class Regressor(LightningModule):
    """A backbone mapping inputs to ``num_outputs`` values, trained on standardised targets.

    Logs ``<stage>/loss`` (on standardised values, so it compares across data sets) and, in
    the targets' units, ``<stage>/mae``, ``<stage>/rmse`` and ``<stage>/r2`` (averaged over
    the outputs), for ``train``, ``val`` and ``test``.

    Args:
        backbone: a class (or callable) whose first argument is the number of outputs, as for
            ``ImageClassifier``. None: ``MLP`` for tables (``in_features`` known), else
            ``SmallCNN`` (global pooling, then a linear head: any image size).
        loss: ``mse``; ``l1`` for a median-like fit that outliers pull less; ``huber``
            (quadratic within one standard deviation, linear beyond).
        optimizer, scheduler, scheduler_interval, scheduler_monitor, no_weight_decay,
            weight_decay_norm_and_bias: as for ``ImageClassifier`` (``models.optim``).
        task: linked from ``data.task``; anything but ``regression`` is refused in one line
            naming the module for it.
        num_outputs: target columns (linked). None: one per ``target_mean`` entry, else 1.
        target_names: the target columns' names (linked), kept for reports and predictions.
        target_mean, target_std: per target column, from the training split (linked). None: no
            scaling (the network learns the raw values).
        in_features: a table's feature count (linked), for a backbone that takes it (``MLP``).
        in_channels: the images' channels (linked), for a backbone that takes it.
    """

    def __init__(
        self,
        backbone: Callable[[int], nn.Module] | None = None,
        loss: Literal["mse", "l1", "huber"] = "mse",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        scheduler_monitor: str = "val/loss",
        no_weight_decay: Sequence[str] = (),
        weight_decay_norm_and_bias: bool = False,
        task: str = "regression",  # str: see ImageClassifier's task
        num_outputs: int | None = None,
        target_names: list[str] | None = None,
        target_mean: list[float] | None = None,
        target_std: list[float] | None = None,
        in_features: int | None = None,
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        check_task("Regressor", task, ("regression",))
        if loss not in LOSSES:
            raise ValueError(f"Regressor: loss {loss!r} is not one of {', '.join(LOSSES)}")
        if num_outputs is None:
            num_outputs = len(target_mean) if target_mean else 1
        self.save_hyperparameters()
        self.hparams["num_outputs"] = num_outputs  # as worked out above, for a reload
        self.num_outputs = num_outputs
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.loss_fn = LOSSES[loss]
        # Buffers, so they follow the module to its device; not in the state dict: the
        # hyperparameters rebuild them.
        self.register_buffer("target_shift", _per_output(target_mean, 0.0, num_outputs, "mean"),
                             persistent=False)
        self.register_buffer("target_scale", _per_output(target_std, 1.0, num_outputs, "std"),
                             persistent=False)
        factory = backbone or (SmallCNN if in_features is None else MLP)
        self.net = build_backbone(factory, num_outputs, in_features=in_features,
                                  in_channels=in_channels)
        metrics = MetricCollection({"mae": MeanAbsoluteError(),
                                    "rmse": MeanSquaredError(squared=False),
                                    "r2": _r2_score(num_outputs)})
        # One set per stage: their states must not mix (sanity-check batches, for one).
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}/"))
            setattr(self, f"{stage}_loss", MeanMetric())

    def forward(self, x: Tensor) -> Tensor:
        """Predictions in the targets' units: ``(N,)`` for one output, else ``(N, K)``."""
        return self.to_units(self.net(x))

    def to_units(self, standardised: Tensor) -> Tensor:
        """The network's standardised ``(N, K)`` output in the targets' units and shape."""
        values = standardised.float() * self.target_scale + self.target_shift
        return values.squeeze(-1) if self.num_outputs == 1 else values

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> tuple[Tensor, Tensor]:
        inputs, targets = batch
        standardised = self.net(inputs).float()
        scaled_targets = ((targets - self.target_shift) / self.target_scale).view_as(standardised)
        loss = self.loss_fn(standardised, scaled_targets)
        predictions = self.to_units(standardised.detach())
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        metrics.update(predictions, targets)
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=len(targets))
        if stage == "train":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss, predictions

    def _log_epoch(self, stage: Stage) -> None:
        self.log_dict(getattr(self, f"{stage}_metrics"))
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=stage == "val")

    # Metrics logged once per epoch, as ImageClassifier's (benchmarks/overhead.py).
    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")[0]

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        # The predictions (original units) as `outputs`: a callback can plot predicted
        # against true without a second forward pass.
        return self._shared_step(batch, "val")[1]

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """``forward``: the predictions in the targets' units, ``(N,)`` or ``(N, K)``."""
        return self(batch[0] if isinstance(batch, (tuple, list)) else batch)

    def configure_optimizers(self) -> Any:
        return optimizers_from_hparams(self, self.optimizer_factory, self.scheduler_factory)

    def on_train_start(self) -> None:
        check_resumed_schedule(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        forget_weights_path(checkpoint)


def _per_output(values: Sequence[float] | None, default: float, outputs: int,
                what: str) -> Tensor:
    if values is None:
        return torch.full((outputs,), default)
    if len(values) != outputs:
        raise ValueError(f"Regressor: target_{what} has {len(values)} values for "
                         f"{outputs} outputs (num_outputs)")
    tensor = torch.tensor([float(v) for v in values])
    if what == "std":  # a constant column: nothing to scale, and no division by zero
        tensor = torch.where(torch.isfinite(tensor) & (tensor > 0), tensor, 1.0)
    return tensor


def _r2_score(outputs: int) -> R2Score:
    """R2 averaged over the outputs. Older torchmetrics releases size its state from
    ``num_outputs``; newer ones take the size from the data and no longer accept it."""
    takes = "num_outputs" in inspect.signature(R2Score.__init__).parameters
    return R2Score(num_outputs=outputs) if takes else R2Score()
