"""The default LightningModule: a classifier around any ``nn.Module`` backbone.

The story of a run, top to bottom: the backbone is built in ``__init__`` for ``num_classes``
(train.py links it, the task and the input size from the datamodule, so configs never repeat
them), every stage runs the same ``_shared_step`` (loss + torchmetrics), and
``configure_optimizers`` hands the optimizer and scheduler callables from the config to
``models.optim.optimizers_from_config``.

Two tasks, one module: ``multiclass`` (one class per input: cross-entropy, softmax) and
``multilabel`` (any number of labels per input: a sigmoid and binary cross-entropy per label).
They share the backbone, the head width (one logit per class or label) and all the wiring.

The helpers at the bottom (``build_backbone``, ``check_task``, ``forget_weights_path``) are
what ``models.regressor`` and ``models.segmenter`` share with this module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from errors import DataError
from models.mlp import MLP
from models.optim import check_resumed_schedule, no_weight_decay_names, optimizers_from_hparams
from models.param_groups import param_groups_weight_decay
from models.small_cnn import SmallCNN

Stage = Literal["train", "val", "test"]

# The template's module for each task, for the error a module gives data of another task.
MODULE_FOR_TASK = {
    "multiclass": "models.classifier.ImageClassifier",
    "multilabel": "models.classifier.ImageClassifier (task: multilabel)",
    "regression": "models.regressor.Regressor",
    "segmentation": "models.segmenter.Segmenter",
    "none": "a LightningModule of your own (task none has no targets to learn)",
}


class ImageClassifier(LightningModule):
    """Classifier over a backbone that maps images (or features) to one logit per class.

    Args:
        backbone: a class (or callable) whose first argument is the number of classes, given in
            YAML as ``class_path`` + ``init_args`` without ``num_classes``. None (the default):
            ``MLP`` when the data is a table (``in_features`` known), else ``SmallCNN``.
        optimizer: called with the parameter groups; its own ``weight_decay`` applies to the
            decayed group.
        scheduler: called with the optimizer; if it accepts ``total_steps`` (OneCycleLR and this
            project's schedules do) it receives ``trainer.estimated_stepping_batches``, so the
            schedule is right for any devices / accumulation / limits.
        scheduler_interval: ``step`` to step the schedule after every optimizer step, ``epoch``
            for per-epoch schedules such as StepLR.
        scheduler_monitor: metric that ReduceLROnPlateau-style schedulers watch.
        label_smoothing: passed to ``F.cross_entropy`` (multiclass only: a multi-hot target has
            no single class to take the mass from).
        no_weight_decay: extra parameter names (or prefixes ending in ``.``) that get no decay,
            on top of every bias, normalisation parameter and other 1-D parameter.
        weight_decay_norm_and_bias: ``True`` decays biases and normalisation parameters too
            (one group, as ``optimizer(model.parameters())`` would); only to reproduce papers.
        l1_penalty: ``l1_penalty * sum(|w|)`` over the weights that get weight decay (never
            biases or norm parameters) is added to the training loss; ``train/loss`` stays the
            classification loss so runs with and without it compare.
        task: ``multiclass`` (int64 class index targets; metrics ``acc``, ``f1``; predictions
            are softmax probabilities) or ``multilabel`` (float multi-hot ``(N, K)`` targets;
            metrics ``f1`` (macro, at 0.5) and ``map`` (macro average precision); predictions
            are one sigmoid probability per label). Linked from ``data.task``; any other task
            is refused in one line naming the module for it.
        num_classes: the width of the head (classes, or labels). train.py links it from the
            datamodule (``data.num_classes``), so a config never sets it; saved in the
            checkpoint so ``load_from_checkpoint`` rebuilds the same network.
        class_names: likewise linked from ``data.class_names``, so predictions can be reported
            with the original labels.
        in_features: the data's feature count (linked from ``data.num_features`` for tables),
            passed on to a backbone that takes ``in_features`` and was not given one (``MLP``).
        in_channels: the images' channels (linked from ``data.in_channels``), passed on the
            same way (``SmallCNN`` with ``in_channels`` unset).
        channels_last: keep the backbone's weights and the input batches in NHWC memory
            layout. Off by default: it is meant for conv nets on GPUs with tensor cores under
            16-bit precision (cuDNN's fastest convolutions are NHWC); an MLP's 2-D inputs are
            left as they are.
        per_class_accuracy_max_classes: log validation and test accuracy per class
            (``val/acc_per_class/<class name>``; multilabel: ``val/f1_per_label/<label>`` and
            ``val/ap_per_label/<label>``), once per epoch, when there
            are at most this many classes or labels; ``0`` turns it off. Beyond a few dozen
            the TensorBoard confusion matrix says more than a wall of curves.
        compile_backbone: ``torch.compile`` the backbone (``nn.Module.compile``, so checkpoint
            keys stay the same); a dict is passed to it as keyword arguments, e.g.
            ``{mode: max-autotune}``. Off by default: compiling costs start-up time (49 s for
            the first step of the digits CNN on a 2-core CPU) that a run of seconds never wins
            back; turn it on for long GPU runs.
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
        # str, not a Literal: the data links its task here, and a Literal would make the
        # parser refuse a regression run with a type error instead of check_task's advice.
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
        # The values received, whatever the recorded config says: before Lightning 2.6,
        # LightningCLI recorded linked arguments as they were in the config (unset).
        self.hparams.update(task=task, class_names=class_names, in_features=in_features,
                            in_channels=in_channels)
        self.backbone_factory = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._multilabel = task == "multilabel"
        self._l1_params: list[nn.Parameter] | None = None
        if num_classes is None:
            raise ValueError(
                "ImageClassifier: num_classes is unknown. Give model.init_args.num_classes or use "
                "a datamodule with a `num_classes` attribute (train.py links it).")
        self._build(num_classes)

    def _build(self, num_classes: int) -> None:
        self.hparams["num_classes"] = num_classes
        in_features = self.hparams["in_features"]
        factory = self.backbone_factory or (SmallCNN if in_features is None else MLP)
        self.net = build_backbone(factory, num_classes, in_features=in_features,
                                  in_channels=self.hparams["in_channels"])
        if self.hparams["channels_last"]:
            self.net = self.net.to(memory_format=torch.channels_last)
        compile_options = self.hparams["compile_backbone"]
        if compile_options:
            self.net.compile(**(compile_options if isinstance(compile_options, dict) else {}))
        if self._multilabel:
            metrics = MetricCollection({
                "f1": MultilabelF1Score(num_classes, average="macro"),
                "map": MultilabelAveragePrecision(num_classes, average="macro"),
            })
            per_class = {"f1_per_label": MultilabelF1Score(num_classes, average=None),
                         "ap_per_label": MultilabelAveragePrecision(num_classes, average=None)}
        else:
            metrics = MetricCollection({
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            })
            per_class = {"acc_per_class": MulticlassAccuracy(num_classes, average=None)}
        # One set per stage: their states must not mix (sanity-check batches, for one).
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}/"))
            setattr(self, f"{stage}_loss", MeanMetric())
        few = 0 < num_classes <= self.hparams.get("per_class_accuracy_max_classes", 0)
        for stage in ("val", "test"):
            setattr(self, f"{stage}_per_class",
                    MetricCollection(per_class).clone() if few else None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        forget_weights_path(checkpoint)

    # -- forward and the shared step ---------------------------------------------------------
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
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        metrics.update(scores, targets)
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=len(targets))
        per_class: MetricCollection | None = getattr(self, f"{stage}_per_class", None)
        if per_class is not None:
            per_class.update(scores, targets)
        if stage == "train":
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss, logits

    def _log_epoch(self, stage: Stage) -> None:
        self.log_dict(getattr(self, f"{stage}_metrics"), prog_bar=stage == "val")
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss"), prog_bar=stage == "val")
        self._log_per_class(stage)

    def _log_per_class(self, stage: Stage) -> None:
        """``<stage>/acc_per_class/<class>`` (multilabel: ``f1_per_label``, ``ap_per_label``),
        once per epoch: a vector metric that ``self.log`` cannot take whole."""
        metrics: MetricCollection | None = getattr(self, f"{stage}_per_class", None)
        if metrics is None:
            return
        per_class = {kind: value.tolist() for kind, value in metrics.compute().items()}
        metrics.reset()
        names = self.hparams["class_names"] or [str(i) for i in range(self.hparams["num_classes"])]
        # Already synced by compute(); sync_dist only keeps Lightning from warning under DDP.
        self.log_dict({f"{stage}/{kind}/{name}": value for kind, per in per_class.items()
                       for name, value in zip(names, per, strict=True)}, sync_dist=True)

    # Metric objects, updated every step, logged once per epoch: Lightning computes them (synced
    # across DDP ranks) and resets them. Logging them from every step instead costs ~0.7 ms per
    # metric and step in Lightning's bookkeeping (benchmarks/overhead.py).
    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._shared_step(batch, "train")
        if self.hparams["l1_penalty"]:
            if self._l1_params is None:
                self._l1_params = self._decayed_weights()
            l1 = self.hparams["l1_penalty"] * sum(p.abs().sum() for p in self._l1_params)
            self.log("train/l1_step", l1, on_step=True, on_epoch=False)
            loss = loss + l1
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        _, logits = self._shared_step(batch, "val")
        # Callbacks get the (batch, classes) logits as `outputs` (TensorBoardImages draws the
        # confusion matrix and the worst mistakes from them) without a second forward pass.
        return logits.detach()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Probabilities ``(N, num_classes)``: softmax (rows sum to 1) for multiclass, one
        independent sigmoid per label for multilabel."""
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        logits = self(inputs)
        return logits.sigmoid() if self._multilabel else logits.softmax(dim=-1)

    # -- optimization ------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        self._l1_params = self._decayed_weights()
        return optimizers_from_hparams(self, self.optimizer_factory, self.scheduler_factory)

    def on_train_start(self) -> None:
        check_resumed_schedule(self)

    def _decayed_weights(self) -> list[nn.Parameter]:
        """The parameters the L1 penalty applies to: those weight decay would apply to with
        the bias/norm exclusion on, whatever ``weight_decay_norm_and_bias`` says."""
        groups = param_groups_weight_decay(
            self, no_weight_decay_names(self, self.hparams["no_weight_decay"]))
        return [p for g in groups if "weight_decay" not in g for p in g["params"]]


# -- what the template's modules share ----------------------------------------------------
def build_backbone(factory: Callable[..., nn.Module], outputs: int, *,
                   in_features: int | None = None,
                   in_channels: int | None = None) -> nn.Module:
    """``factory(outputs, ...)``, with the data's input size for a backbone that takes it.

    ``in_features`` / ``in_channels`` (linked from the data) go to a backbone whose signature
    has them and that was not given them: for jsonargparse's ``functools.partial`` (whose
    keywords hold every init argument) that is a value left at None; for a plain class, any
    argument of that name. A value set in the config wins, so ``configs/digits.yaml``'s
    ``in_channels: 1`` stays what it says.
    """
    sizes = {name: value for name, value in (("in_features", in_features),
                                             ("in_channels", in_channels))
             if value is not None and _left_unset(factory, name)}
    return factory(outputs, **sizes)


def _left_unset(factory: Callable[..., Any], name: str) -> bool:
    keywords = getattr(factory, "keywords", None)  # jsonargparse's partial: every init arg
    if keywords is not None and name in keywords:
        return keywords[name] is None
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def check_task(owner: str, task: str, serves: tuple[str, ...]) -> None:
    """Refuse, in one line that names the module to use, data of a task ``owner`` does not
    learn (train.py links ``data.task`` into every module that takes ``task``).

    A ``DataError`` (a ``ValueError``): train.py prints those as one line, without the
    traceback through jsonargparse that would bury the advice."""
    if task not in serves:
        use = MODULE_FOR_TASK.get(task)
        advice = f": use {use}" if use else f" (it serves {' and '.join(serves)})"
        raise DataError(f"{owner} does not learn task {task!r}{advice}")


def forget_weights_path(checkpoint: dict[str, Any]) -> None:
    """Save the backbone's ``weights_path`` as null (from ``on_save_checkpoint``): the trained
    weights are in the checkpoint, and ``load_from_checkpoint`` must not need the pretrained
    file they started from (often a relative path, or not on the machine that serves the
    model). The run's ``config.yaml`` still names it."""
    hparams = checkpoint.get("hyper_parameters") or {}
    backbone = hparams.get("backbone")
    init_args = backbone.get("init_args") if isinstance(backbone, dict) else None
    if isinstance(init_args, dict) and init_args.get("weights_path"):
        # Copies: the checkpoint's hparams share their nested dicts with self.hparams.
        checkpoint["hyper_parameters"] = {**hparams, "backbone": {
            **backbone, "init_args": {**init_args, "weights_path": None}}}
