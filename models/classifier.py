"""The default LightningModule: a classifier around any ``nn.Module`` backbone for ``multiclass``
(one class per input: softmax, cross-entropy) and ``multilabel`` (any labels per input: one
sigmoid and binary cross-entropy per label) data. The functions at the bottom serve
``models.regressor`` and ``models.segmenter`` too."""

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics import classification as tmc

from models import optim
from models.param_groups import param_groups_weight_decay
from models.small_cnn import SmallCNN

Stage = Literal["train", "val", "test"]


class ImageClassifier(LightningModule):
    """Classifier over a backbone that maps images (or features) to one logit per class.

    Args:
        backbone: a class whose first argument is the number of classes (not given in YAML).
            None: ``MLP`` for tables (``in_features`` known), else ``SmallCNN``.
        optimizer: called with the parameter groups; its ``weight_decay`` is the decayed group's.
        scheduler: called with the optimizer, and ``total_steps`` where it takes it (OneCycleLR).
        scheduler_interval: ``step`` steps the schedule every optimizer step, ``epoch`` per epoch.
        scheduler_monitor: the metric ReduceLROnPlateau-style schedules watch.
        label_smoothing: for ``F.cross_entropy`` (multiclass only).
        no_weight_decay: more parameter names (or prefixes ending in ``.``) not to decay.
        weight_decay_norm_and_bias: decay biases and normalisation parameters too (papers).
        l1_penalty: adds ``l1_penalty * sum(|w|)`` of the decayed weights to the training loss
            (not to ``train/loss``).
        task: ``multiclass`` (class index targets; ``acc``, ``f1``) or ``multilabel`` (multi-hot
            ``(N, K)`` targets; ``f1`` at 0.5, ``map``). Linked from the data, as the next four.
        num_classes: the width of the head (classes or labels).
        class_names: the classes' names, for per-class metrics and predictions.
        in_features: a table's feature count, for a backbone that takes it and was not given it.
        in_channels: the images' channels, likewise (``SmallCNN``).
        channels_last: NHWC weights and batches: faster convolutions on tensor-core GPUs (16-bit).
        compile_backbone: ``torch.compile`` the backbone (a dict: its keyword arguments). Costs
            start-up (49 s for the digits CNN's first step on a 2-core CPU): for long GPU runs.
        per_class_accuracy_max_classes: log val/test metrics per class (``acc_per_class``;
            multilabel ``f1_per_label``, ``ap_per_label``) up to this many classes; 0: off.
    """

    def __init__(
        self,
        backbone: Callable[[int], nn.Module] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        scheduler_monitor: str = "val/loss",
        label_smoothing: float = 0.0,
        no_weight_decay: Sequence[str] = (),
        weight_decay_norm_and_bias: bool = False,
        l1_penalty: float = 0.0,
        # str, not a Literal: the parser would refuse other tasks' data with a type error
        # instead of check_task's advice.
        task: str = "multiclass",
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        in_features: int | None = None,
        in_channels: int | None = None,
        channels_last: bool = False,
        compile_backbone: bool | dict[str, Any] = False,
        per_class_accuracy_max_classes: int = 20,
    ) -> None:
        super().__init__()
        check_task("ImageClassifier", task, ("multiclass", "multilabel"))
        self.save_hyperparameters()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self._multilabel = task == "multilabel"
        if num_classes is None:
            raise ValueError(
                "ImageClassifier: num_classes is unknown. Give model.init_args.num_classes or use "
                "a datamodule with a `num_classes` attribute (train.py links it).")
        if backbone is None and in_features is not None:
            from models.mlp import MLP

            backbone = MLP
        self.net = build_backbone(backbone or SmallCNN, num_classes, in_features=in_features,
                                  in_channels=in_channels)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if compile_backbone:  # in place: torch.compile(net) would prefix every checkpoint key
            self.net.compile(**(compile_backbone if isinstance(compile_backbone, dict) else {}))
        if self._multilabel:
            metrics = {"f1": tmc.MultilabelF1Score(num_classes, average="macro"),
                       "map": tmc.MultilabelAveragePrecision(num_classes, average="macro")}
            per_class = {"f1_per_label": tmc.MultilabelF1Score(num_classes, average=None),
                         "ap_per_label": tmc.MultilabelAveragePrecision(num_classes, average=None)}
        else:
            metrics = {"acc": tmc.MulticlassAccuracy(num_classes, average="micro"),
                       "f1": tmc.MulticlassF1Score(num_classes, average="macro")}
            per_class = {"acc_per_class": tmc.MulticlassAccuracy(num_classes, average=None)}
        few = 0 < num_classes <= per_class_accuracy_max_classes
        # One set per stage: their states must not mix (sanity-check batches, for one).
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_metrics", MetricCollection(metrics).clone(prefix=f"{stage}/"))
            setattr(self, f"{stage}_loss", MeanMetric())
            if stage != "train":
                setattr(self, f"{stage}_per_class",
                        MetricCollection(per_class).clone() if few else None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        forget_weights_path(checkpoint)

    def forward(self, x: Tensor) -> Tensor:
        if self.hparams["channels_last"] and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> tuple[Tensor, Tensor]:
        inputs, targets = batch
        logits = self(inputs)
        if self._multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
            # Average precision needs the scores; torchmetrics wants integer multi-hot targets.
            scores, targets = logits.detach().float().sigmoid(), targets.long()
        else:
            loss = F.cross_entropy(logits, targets,
                                   label_smoothing=self.hparams["label_smoothing"])
            scores = logits.detach()
        getattr(self, f"{stage}_metrics").update(scores, targets)
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=len(targets))
        per_class: MetricCollection | None = getattr(self, f"{stage}_per_class", None)
        if per_class is not None:
            per_class.update(scores, targets)
        if stage == "train":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss, logits

    # Metric objects, updated every step and logged once per epoch (Lightning computes them,
    # synced across DDP ranks, and resets them): logging them every step costs ~0.7 ms per
    # metric and step in Lightning's bookkeeping (benchmarks/overhead.py).
    def _log_epoch(self, stage: Stage) -> None:
        self.log_dict(getattr(self, f"{stage}_metrics"), prog_bar=stage == "val")
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=stage == "val")
        per_class: MetricCollection | None = getattr(self, f"{stage}_per_class", None)
        if per_class is None:
            return
        values = {kind: value.tolist() for kind, value in per_class.compute().items()}
        per_class.reset()
        names = self.hparams["class_names"] or [str(i) for i in range(self.hparams["num_classes"])]
        # Already synced by compute(); sync_dist only keeps Lightning from warning under DDP.
        self.log_dict({f"{stage}/{kind}/{name}": value for kind, per in values.items()
                       for name, value in zip(names, per, strict=True)}, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._shared_step(batch, "train")
        if self.hparams["l1_penalty"]:
            # The weights trainable now (a fine-tuning callback may have unfrozen more) and
            # decayed with the bias/norm exclusion on, whatever weight_decay_norm_and_bias says.
            groups = param_groups_weight_decay(
                self, optim.no_weight_decay_names(self, self.hparams["no_weight_decay"]))
            weights = [p for g in groups if "weight_decay" not in g for p in g["params"]]
            l1 = self.hparams["l1_penalty"] * sum(p.abs().sum() for p in weights)
            self.log("train/l1_step", l1, on_step=True, on_epoch=False)
            loss = loss + l1
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        # The logits as callbacks' `outputs` (TensorBoardImages' confusion matrix, worst
        # mistakes) without a second forward pass.
        return self._shared_step(batch, "val")[1].detach()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Probabilities ``(N, num_classes)``: softmax for multiclass, sigmoids for multilabel."""
        logits = self(batch[0] if isinstance(batch, (tuple, list)) else batch)
        return logits.sigmoid() if self._multilabel else logits.softmax(dim=-1)

    def configure_optimizers(self) -> Any:
        return optim.optimizers_from_hparams(self, self.optimizer_factory, self.scheduler_factory)

    def on_train_start(self) -> None:
        optim.check_resumed_schedule(self)


def build_backbone(factory: Callable[..., nn.Module], outputs: int, *,
                   in_features: int | None = None,
                   in_channels: int | None = None) -> nn.Module:
    """``factory(outputs)``, given the data's ``in_features`` / ``in_channels`` where it takes
    them and the config left them unset (a value set in the config, such as digits.yaml's
    ``in_channels: 1``, wins)."""
    sizes = {"in_features": in_features, "in_channels": in_channels}
    return factory(outputs, **{name: value for name, value in sizes.items()
                               if value is not None and optim.unset_argument(factory, name)})


def check_task(owner: str, task: str, serves: tuple[str, ...]) -> None:
    """Refuse data of a task ``owner`` does not learn, in one line naming the module to use."""
    if task not in serves:
        from models.task_advice import wrong_task

        raise wrong_task(owner, task, serves)


def forget_weights_path(checkpoint: dict[str, Any]) -> None:
    """From ``on_save_checkpoint``: save the backbone's ``weights_path`` as null, so that
    ``load_from_checkpoint`` never needs the pretrained file the weights started from (the
    run's config.yaml still names it)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    backbone = hparams.get("backbone")
    init_args = backbone.get("init_args") if isinstance(backbone, dict) else None
    if isinstance(init_args, dict) and init_args.get("weights_path"):
        # Copies: the checkpoint's hparams share their nested dicts with self.hparams.
        checkpoint["hyper_parameters"] = {**hparams, "backbone": {
            **backbone, "init_args": {**init_args, "weights_path": None}}}
