"""The default LightningModule: a classifier around any ``nn.Module`` backbone.

The story of a run, top to bottom: the backbone is built in ``__init__`` for ``num_classes``
(train.py links it from the datamodule, so configs never repeat it), every stage runs the same
``_shared_step``
(loss + torchmetrics), and ``configure_optimizers`` turns the optimizer and scheduler callables
from the config into weight-decay parameter groups and a schedule sized from the trainer.
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
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from callbacks.direct_logging import log_to_loggers, logs_this_step
from models.param_groups import param_groups_weight_decay
from models.small_cnn import SmallCNN

Stage = Literal["train", "val", "test"]


class ImageClassifier(LightningModule):
    """Cross-entropy classifier over a backbone that maps images (or features) to logits.

    Args:
        backbone: a class (or callable) whose first argument is the number of classes, given in
            YAML as ``class_path`` + ``init_args`` without ``num_classes``.
        optimizer: called with the parameter groups; its own ``weight_decay`` applies to the
            decayed group.
        scheduler: called with the optimizer; if it accepts ``total_steps`` (OneCycleLR and this
            project's schedules do) it receives ``trainer.estimated_stepping_batches``, so the
            schedule is right for any devices / accumulation / limits.
        scheduler_interval: ``step`` to step the schedule after every optimizer step, ``epoch``
            for per-epoch schedules such as StepLR.
        scheduler_monitor: metric that ReduceLROnPlateau-style schedulers watch.
        label_smoothing: passed to ``F.cross_entropy``.
        no_weight_decay: extra parameter names (or prefixes ending in ``.``) that get no decay,
            on top of every bias, normalisation parameter and other 1-D parameter.
        weight_decay_norm_and_bias: ``True`` decays biases and normalisation parameters too
            (one group, as ``optimizer(model.parameters())`` would); only to reproduce papers.
        l1_penalty: ``l1_penalty * sum(|w|)`` over the weights that get weight decay (never
            biases or norm parameters) is added to the training loss; ``train/loss`` stays the
            cross-entropy so runs with and without it compare.
        num_classes: the width of the head. train.py links it from the datamodule
            (``data.num_classes``), so a config never sets it; saved in the checkpoint so
            ``load_from_checkpoint`` rebuilds the same network.
        class_names: likewise linked from ``data.class_names``, so predictions can be reported
            with the original labels.
        in_features: the data's feature count (linked from ``data.num_features`` for tables),
            passed on to a backbone that takes ``in_features`` and was not given one (``MLP``).
        channels_last: keep the backbone's weights and the input batches in NHWC memory
            layout. Off by default: it is meant for conv nets on GPUs with tensor cores under
            16-bit precision (cuDNN's fastest convolutions are NHWC); an MLP's 2-D inputs are
            left as they are.
        per_class_accuracy_max_classes: log validation and test accuracy per class
            (``val/acc_per_class/<class name>``, straight to the logger, once per epoch) when
            there are at most this many classes; ``0`` turns it off. Beyond a few dozen
            classes the TensorBoard confusion matrix says more than a wall of curves.
        compile_backbone: ``torch.compile`` the backbone (``nn.Module.compile``, so checkpoint
            keys stay the same); a dict is passed to it as keyword arguments, e.g.
            ``{mode: max-autotune}``. Off by default: compiling costs start-up time (49 s for
            the first step of the digits CNN on a 2-core CPU) that a run of seconds never wins
            back; turn it on for long GPU runs.
    """

    def __init__(
        self,
        backbone: Callable[[int], nn.Module] = SmallCNN,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        scheduler_monitor: str = "val/loss",
        label_smoothing: float = 0.0,
        no_weight_decay: Sequence[str] = (),
        weight_decay_norm_and_bias: bool = False,
        l1_penalty: float = 0.0,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        in_features: int | None = None,
        channels_last: bool = False,
        compile_backbone: bool | dict[str, Any] = False,
        per_class_accuracy_max_classes: int = 20,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # The values received, whatever the recorded config says: before Lightning 2.6,
        # LightningCLI recorded linked arguments as they were in the config (unset).
        self.hparams.update(class_names=class_names, in_features=in_features)
        self.backbone_factory = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._l1_params: list[nn.Parameter] | None = None
        if num_classes is None:
            raise ValueError(
                "ImageClassifier: num_classes is unknown. Give model.init_args.num_classes or use "
                "a datamodule with a `num_classes` attribute (train.py links it).")
        self._build(num_classes)

    def _build(self, num_classes: int) -> None:
        self.hparams["num_classes"] = num_classes
        self.net = self.backbone_factory(num_classes, **self._backbone_size_kwargs())
        if self.hparams["channels_last"]:
            self.net = self.net.to(memory_format=torch.channels_last)
        compile_options = self.hparams["compile_backbone"]
        if compile_options:
            self.net.compile(**(compile_options if isinstance(compile_options, dict) else {}))
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        # One set per stage: their states must not mix (sanity-check batches, for one).
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}/"))
            setattr(self, f"{stage}_loss", MeanMetric())
        self._epoch_outputs: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {
            "train": [], "val": [], "test": []}
        per_class = 0 < num_classes <= self.hparams.get("per_class_accuracy_max_classes", 0)
        for stage in ("val", "test"):
            setattr(self, f"{stage}_per_class_acc",
                    MulticlassAccuracy(num_classes, average=None) if per_class else None)

    def _backbone_size_kwargs(self) -> dict[str, int]:
        """``in_features`` for a backbone that takes it and was not given it in the config."""
        in_features = self.hparams.get("in_features")
        if in_features is None:
            return {}
        factory = self.backbone_factory
        keywords = getattr(factory, "keywords", None)  # jsonargparse's partial: every init arg
        if keywords is not None:
            unset = "in_features" in keywords and keywords["in_features"] is None
            return {"in_features": in_features} if unset else {}
        try:
            takes = "in_features" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            return {}
        return {"in_features": in_features} if takes else {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the backbone's ``weights_path`` as null: the trained weights are in the
        checkpoint, and ``load_from_checkpoint`` must not need the pretrained file they started
        from (often a relative path, or not on the machine that serves the model). The run's
        ``config.yaml`` still names it."""
        hparams = checkpoint.get("hyper_parameters") or {}
        backbone = hparams.get("backbone")
        init_args = backbone.get("init_args") if isinstance(backbone, dict) else None
        if isinstance(init_args, dict) and init_args.get("weights_path"):
            # Copies: the checkpoint's hparams share their nested dicts with self.hparams.
            checkpoint["hyper_parameters"] = {**hparams, "backbone": {
                **backbone, "init_args": {**init_args, "weights_path": None}}}

    # -- forward and the shared step ---------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.hparams["channels_last"] and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: Stage) -> tuple[Tensor, Tensor]:
        images, targets = batch
        logits = self(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams["label_smoothing"])
        # Only kept here; the metrics see the whole epoch at once in _log_epoch_metrics. Updating
        # MetricCollection(acc, f1) + MeanMetric every step (input checks, small kernels) took
        # ~1 ms, ~10 % of a digits CNN step on CPU; the epoch values are the same (the states
        # are sums).
        self._epoch_outputs[stage].append(
            (logits.detach().argmax(-1), targets, loss.detach() * len(targets)))
        # Per-step loss for the progress bar and the logger, only on the steps the logger
        # writes (as LearningRateMonitor does), sparing self.log's bookkeeping on the others.
        # Unsynced: a collective on every step costs ~30 % under DDP.
        if stage == "train" and logs_this_step(self.trainer):
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss, logits

    def _log_epoch_metrics(self, stage: Stage) -> None:
        """Compute a stage's epoch metrics from the kept outputs, log and reset them;
        torchmetrics syncs them across DDP ranks."""
        outputs = self._epoch_outputs[stage]
        if not outputs:  # e.g. limit_val_batches=0
            return
        predictions = torch.cat([p for p, _, _ in outputs])
        targets = torch.cat([t for _, t, _ in outputs])
        weighted_losses = torch.stack([w for _, _, w in outputs])
        outputs.clear()
        loss: MeanMetric = getattr(self, f"{stage}_loss")
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        loss.update(weighted_losses.sum() / len(targets), weight=len(targets))
        metrics.update(predictions, targets)
        values = {f"{stage}/loss": loss.compute(), **metrics.compute()}
        self._log_per_class_accuracy(stage, predictions, targets)
        # Already equal on every rank; sync_dist keeps Lightning from warning and costs one
        # collective per epoch.
        self.log_dict(values, sync_dist=True, prog_bar=stage == "val")
        loss.reset()
        metrics.reset()

    def _log_per_class_accuracy(self, stage: Stage, predictions: Tensor, targets: Tensor) -> None:
        """``<stage>/acc_per_class/<class>`` to the loggers, bypassing ``self.log`` (~1 ms per
        value of bookkeeping; these are for TensorBoard, not for callbacks or checkpoints)."""
        metric: MulticlassAccuracy | None = getattr(self, f"{stage}_per_class_acc", None)
        if metric is None:
            return
        metric.update(predictions, targets)
        per_class = metric.compute().tolist()  # synced across DDP ranks, on every rank
        metric.reset()
        if self.trainer.sanity_checking:
            return
        names = self.hparams["class_names"] or [str(i) for i in range(len(per_class))]
        values = {f"{stage}/acc_per_class/{name}": value
                  for name, value in zip(names, per_class, strict=True)}
        # Inside fit the epoch's optimizer steps are done: its metrics belong to the last one.
        fitting = self.trainer.state.fn == "fit"
        log_to_loggers(self.trainer, values, step=self.trainer.global_step - int(fitting))

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

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
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(dim=-1)

    # -- optimization ------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        groups = param_groups_weight_decay(
            self, self._no_decay_names(),
            exclude_bias_and_norm=not self.hparams["weight_decay_norm_and_bias"],
        )
        self._l1_params = self._decayed_weights()
        optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, **self._schedule_length_kwargs())
        config = {"scheduler": scheduler, "interval": self.hparams["scheduler_interval"]}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.hparams["scheduler_monitor"]
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _no_decay_names(self) -> list[str]:
        skip = list(self.hparams["no_weight_decay"])
        if hasattr(self.net, "no_weight_decay"):
            skip += [f"net.{name}" for name in self.net.no_weight_decay()]
        return skip

    def _decayed_weights(self) -> list[nn.Parameter]:
        """The parameters the L1 penalty applies to: those weight decay would apply to with
        the bias/norm exclusion on, whatever ``weight_decay_norm_and_bias`` says."""
        groups = param_groups_weight_decay(self, self._no_decay_names())
        return [p for g in groups if "weight_decay" not in g for p in g["params"]]

    def _schedule_length_kwargs(self) -> dict[str, int]:
        """``total_steps`` for schedules that need it, from the trainer (devices, accumulation
        and limits included), never from a hand-computed config value."""
        if not _needs_total_steps(self.scheduler_factory):
            return {}
        total = self.trainer.estimated_stepping_batches
        if self.hparams["scheduler_interval"] == "epoch":
            total = self.trainer.max_epochs
        unsized = total is None or total == float("inf") or total < 1
        if unsized and _length_optional(self.scheduler_factory):
            return {}  # e.g. NoamLR with warmup in steps: it needs no end
        if unsized:
            name = getattr(_target_class(self.scheduler_factory), "__name__", "The scheduler")
            raise ValueError(
                f"{name} needs a finite number of steps but training length is {total}: "
                "set trainer.max_epochs or trainer.max_steps."
            )
        self._schedule_total_steps = int(total)
        return {"total_steps": int(total)}

    def on_train_start(self) -> None:
        # A resumed run loads the scheduler's state, total_steps included, from the checkpoint.
        # If the run's length changed since (e.g. a larger max_epochs), OneCycle would fail
        # mid-run with "Tried to step N times"; say so now and what to do instead.
        expected = getattr(self, "_schedule_total_steps", None)
        for config in self.trainer.lr_scheduler_configs:
            loaded = getattr(config.scheduler, "total_steps", None)
            if expected is not None and loaded is not None and loaded != expected:
                raise ValueError(
                    f"The checkpoint's {type(config.scheduler).__name__} spans {loaded} steps but "
                    f"this run has {expected} (max_epochs, max_steps, devices, batch size or "
                    "accumulation changed). Resume with the original settings, or start a new "
                    "run from the checkpoint's weights."
                )


def _target_class(factory: Callable[..., Any]) -> type | None:
    """The class behind a config callable: itself, or the class jsonargparse's
    ``functools.partial`` wraps (as ``func``, or among ``args`` in jsonargparse >= 4.40)."""
    if isinstance(factory, type):
        return factory
    candidates = [getattr(factory, "func", None), *getattr(factory, "args", ())]
    return next((c for c in candidates if isinstance(c, type)), None)


def _length_optional(factory: Callable[..., Any]) -> bool:
    """True for schedules (``models.schedulers``) that can run without a known end."""
    return bool(getattr(_target_class(factory), "total_steps_optional", False))


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
