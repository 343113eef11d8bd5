"""The template's module for ``task: segmentation``: a class for every pixel.

Batches are images ``(N, C, H, W)`` and masks ``(N, H, W)`` of class indices; the backbone
(``UNet`` by default) gives logits ``(N, num_classes, H, W)`` and the loss is cross-entropy over
the pixels. Pixel accuracy alone flatters a model that paints everything background, so the
metrics that matter are per class: mean IoU and Dice, each averaged over the classes.
"""

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.segmentation import DiceScore, MeanIoU

from models.classifier import build_backbone, check_task, forget_weights_path
from models.optim import check_resumed_schedule, optimizers_from_hparams
from models.unet import UNet

Stage = Literal["train", "val", "test"]


class Segmenter(LightningModule):
    """Per-pixel cross-entropy over a backbone that maps images to per-pixel logits.

    Logs ``<stage>/loss``, ``<stage>/miou`` (``MeanIoU``: per image, the IoU of each class
    present in its mask or prediction, averaged), ``<stage>/dice`` (``DiceScore``, macro over
    the classes) and ``<stage>/acc`` (pixel accuracy) for ``train``, ``val`` and ``test``. The
    background is one of the classes in all of them.

    Args:
        backbone: a class (or callable) whose first argument is the number of classes and
            that returns logits ``(N, num_classes, H, W)`` at the input's size.
        optimizer, scheduler, scheduler_interval, scheduler_monitor, no_weight_decay,
            weight_decay_norm_and_bias: as for ``ImageClassifier`` (``models.optim``).
        ignore_index: a mask value (e.g. 255) for unlabelled pixels: no loss, no metric.
        task: linked from ``data.task``; anything but ``segmentation`` is refused in one line
            naming the module for it.
        num_classes: mask classes (linked); None: the number of ``class_names``.
        class_names: the class of mask value 0, 1, ... (linked).
        in_channels: the images' channels (linked), for a backbone that takes it and was not
            given it (``UNet``).
    """

    def __init__(
        self,
        backbone: Callable[[int], nn.Module] = UNet,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        scheduler_monitor: str = "val/loss",
        no_weight_decay: Sequence[str] = (),
        weight_decay_norm_and_bias: bool = False,
        ignore_index: int | None = None,
        task: str = "segmentation",  # str: see ImageClassifier's task
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        check_task("Segmenter", task, ("segmentation",))
        if num_classes is None and class_names:
            num_classes = len(class_names)
        if num_classes is None:
            raise ValueError("Segmenter: num_classes is unknown. Give model.init_args.num_classes "
                             "or use a datamodule with `num_classes` (train.py links it).")
        self.save_hyperparameters()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.net = build_backbone(backbone, num_classes, in_channels=in_channels)
        # With ignore_index the masks go to MeanIoU/DiceScore one-hot, ignored pixels all
        # zeros (in neither prediction nor target); they have no ignore_index of their own.
        form = "index" if ignore_index is None else "one-hot"
        overlap = MetricCollection({
            "miou": MeanIoU(num_classes=num_classes, input_format=form),
            "dice": DiceScore(num_classes=num_classes, average="macro", input_format=form),
        })
        accuracy = MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index)
        # One set per stage: their states must not mix (sanity-check batches, for one).
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_metrics", overlap.clone(prefix=f"{stage}/"))
            setattr(self, f"{stage}_acc", accuracy.clone())
            setattr(self, f"{stage}_loss", MeanMetric())

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes, H, W)``."""
        return self.net(x)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> tuple[Tensor, Tensor]:
        images, masks = batch
        logits = self(images)
        ignore = self.hparams["ignore_index"]
        loss = F.cross_entropy(logits, masks, ignore_index=-100 if ignore is None else ignore)
        predicted = logits.detach().argmax(1)
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        metrics.update(*self._overlap_inputs(predicted, masks))
        getattr(self, f"{stage}_acc").update(predicted, masks)
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=len(masks))
        if stage == "train":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss, predicted

    def _log_epoch(self, stage: Stage) -> None:
        self.log_dict(getattr(self, f"{stage}_metrics"))
        self.log(f"{stage}/acc", getattr(self, f"{stage}_acc"))
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=stage == "val")

    # Metrics logged once per epoch, as ImageClassifier's (benchmarks/overhead.py).
    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def _overlap_inputs(self, predicted: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        ignore = self.hparams["ignore_index"]
        if ignore is None:
            return predicted, masks
        classes = self.hparams["num_classes"]
        labelled = (masks != ignore).unsqueeze(1)
        one_hot = [F.one_hot(m, classes).movedim(-1, 1) * labelled
                   for m in (predicted, masks.where(masks != ignore, 0))]
        return one_hot[0], one_hot[1]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")[0]

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        # The predicted masks as `outputs`, for a callback that draws them beside the true
        # ones without a second forward pass.
        return self._shared_step(batch, "val")[1]

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The predicted mask, int64 ``(N, H, W)`` class indices."""
        return self(batch[0] if isinstance(batch, (tuple, list)) else batch).argmax(1)

    def configure_optimizers(self) -> Any:
        return optimizers_from_hparams(self, self.optimizer_factory, self.scheduler_factory)

    def on_train_start(self) -> None:
        check_resumed_schedule(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        forget_weights_path(checkpoint)
