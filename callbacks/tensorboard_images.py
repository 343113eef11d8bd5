"""Pictures in TensorBoard's Images tab that follow the task: what the model is fed, and where
it goes wrong.

The validation pictures are drawn from what ``validation_step`` returns, never from a second
forward pass of their own: that would double the cost of every validation batch, and a user's
``forward`` need not map a batch's inputs to anything these pictures can use. The template's
modules return what their task's picture needs; a module of your own returns it too (see the
list) or gets no validation pictures, with one line per run saying what to return:

* multiclass: logits ``(N, C)`` for ``(N,)`` class targets (dict key ``logits``) give the
  confusion matrix and the worst mistakes;
* multilabel: logits or probabilities ``(N, K)`` for ``(N, K)`` multi-hot targets (``logits``,
  ``probs``) give each label's precision and recall;
* regression: predictions shaped like the ``(N,)`` or ``(N, K)`` targets (``predictions``,
  ``preds``) give a predicted-vs-true scatter;
* segmentation: masks ``(N, H, W)`` or logits ``(N, C, H, W)`` for ``(N, H, W)`` targets and
  ``(N, C, H, W)`` images (``masks``, ``logits``) give image / true / predicted overlays.

The task is the datamodule's ``task``, else the module's ``task`` hyperparameter, else
multiclass when the targets are 1-D int64 (class indices), else unknown: no validation
pictures. Whether a batch's outputs fit is decided from shapes and dtypes only, never from
values: every DDP rank decides alike, so the metrics' collectives match, and no check waits
for the device. Class targets outside the logits' range are left out of the confusion
matrix instead of raising. Anything that does not fit turns the validation pictures off for
the run, with one info line; training goes on.
"""

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image, ImageDraw
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MultilabelPrecision,
    MultilabelRecall,
)
from torchvision import transforms
from torchvision.transforms import v2

from datamodules.base import flatten_transforms
from datamodules.show_batch import labelled_grid

# Per task: what validation_step must return (for the one line), the dict keys it may use, and
# the pictures it gets.
RETURNS = {
    "multiclass": "(N, C) logits for the (N,) class targets",
    "multilabel": "(N, K) logits or probabilities for the (N, K) multi-hot targets",
    "regression": "the predictions, shaped like the (N,) or (N, K) targets",
    "segmentation": "(N, H, W) masks or (N, C, H, W) logits for the (N, H, W) targets, with "
                    "(N, C, H, W) images of the same size",
}
KEYS = {"multiclass": ("logits",), "multilabel": ("logits", "probs", "probabilities"),
        "regression": ("predictions", "preds"), "segmentation": ("masks", "logits")}
PICTURES = {"multiclass": "confusion matrix or worst-mistakes grid",
            "multilabel": "per-label precision/recall", "regression": "predicted-vs-true scatter",
            "segmentation": "mask overlays"}
# Mask colours for classes 1, 2, ...; class 0 (background, usually) stays uncoloured.
PALETTE = torch.tensor([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
                        (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
                        (210, 245, 60), (250, 190, 212)]) / 255


class TensorBoardImages(Callback):
    """Logs, to every ``TensorBoardLogger`` of the run and from rank 0 only:

    * ``images/train_batch``: the first training batch of fit *after* augmentation (the batch
      transforms run on the device before this callback sees it); labelled with class names for
      multiclass, with the masks over the images for segmentation, plain for other tasks.
      Batches that are not images (tables) get no grid.
    * ``images/val_confusion_matrix`` (multiclass): once per validation epoch, rows = true
      class, columns = predicted, counts in the cells, colour = fraction of the row.
      torchmetrics' ``MulticlassConfusionMatrix``, so under DDP it counts every rank's images.
    * ``images/val_worst`` (multiclass): the ``worst_k`` validation images predicted wrong with
      the highest confidence, labelled ``true>predicted confidence``.
    * ``images/val_precision_recall`` (multilabel): each label's precision and recall at 0.5
      over the validation epoch (torchmetrics, every rank's images), as bars.
    * ``images/val_scatter`` (regression): predicted against true, one panel per target column
      (at most four), the first ``max_points`` validation rows of the epoch.
    * ``images/val_masks`` (segmentation): the first ``mask_images`` validation images of the
      epoch, each beside its true and its predicted mask drawn over it.

    The worst mistakes, the scatter and the mask overlays come from rank 0's shard of the
    validation set. What each task's validation pictures need from ``validation_step``, and how
    the task is found: see the module's docstring.

    The cost per validation step is a few tensor operations on what ``validation_step``
    returned, on the device: a softmax and a ``topk`` for the worst mistakes (no host sync), a
    torchmetrics update, or keeping the first rows; drawing and PNG encoding happen once per
    epoch. Each grid holds at most ``max_images`` images, and the confusion
    matrix and the precision/recall bars are skipped above ``max_classes`` classes or labels.
    Float images are un-normalised with the ``Normalize`` found in the datamodule's
    transforms, else min-max scaled.

    Args:
        train_grid: log the training batch at the start of fit.
        confusion_matrix: log the confusion matrix each validation epoch (multiclass).
        worst_k: how many misclassified images to show (0: none; multiclass).
        max_images: at most this many images in the training grid.
        max_classes: no confusion matrix or precision/recall bars above this many classes or
            labels (they would be unreadable).
        max_points: at most this many validation rows in the regression scatter.
        mask_images: how many validation images to show with their masks (0: none).
    """

    def __init__(
        self,
        train_grid: bool = True,
        confusion_matrix: bool = True,
        worst_k: int = 16,
        max_images: int = 32,
        max_classes: int = 50,
        max_points: int = 2000,
        mask_images: int = 6,
    ) -> None:
        self.train_grid = train_grid
        self.confusion_matrix = confusion_matrix
        self.worst_k = worst_k
        self.max_images = max_images
        self.max_classes = max_classes
        self.max_points = max_points
        self.mask_images = mask_images
        self._train_grid_due = False
        self._confmat: MulticlassConfusionMatrix | None = None
        self._label_scores: MetricCollection | None = None
        self._worst: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        self._points: list[tuple[Tensor, Tensor]] = []  # (predicted, true), (rows, columns)
        self._masks: list[tuple[Tensor, Tensor, Tensor]] = []  # images, true, predicted
        # Set once validation_step's outputs did not fit: said once, no more tries this run.
        self._off = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._off = False

    # -- training grid -----------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train_grid_due = self.train_grid

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._train_grid_due:
            return
        self._train_grid_due = False
        inputs, targets = _inputs_and_targets(batch)
        images = _images(inputs)
        if images is None or not trainer.is_global_zero or not _writers(trainer):
            return
        images = images[: self.max_images]
        targets = targets[: self.max_images] if isinstance(targets, Tensor) else None
        task = task_of(trainer, pl_module, targets)
        mean, std = _normalize_stats(trainer.datamodule, train=True)
        labels: list[str] = []
        if task == "multiclass" and _is_int(targets) and targets.ndim == 1:
            names = _names(trainer, pl_module, "class_names")
            labels = [_name(names, t) for t in targets.tolist()]
        elif task == "segmentation" and _masks_fit(targets, images):
            images, mean, std = _overlay(_unit_rgb(images, mean, std), targets), None, None
        picture = labelled_grid(images, labels, max_images=self.max_images, mean=mean, std=std)
        _log_image(trainer, "images/train_batch", picture)

    # -- validation: keep what each batch gives ------------------------------------------------
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._worst, self._points, self._masks = None, [], []
        for metric in (self._confmat, self._label_scores):
            if metric is not None:
                metric.reset()

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or self._off:
            return
        inputs, targets = _inputs_and_targets(batch)
        task = task_of(trainer, pl_module, targets)
        keep = {"multiclass": self._keep_multiclass, "multilabel": self._keep_multilabel,
                "regression": self._keep_regression,
                "segmentation": self._keep_segmentation}.get(str(task))
        returned = outputs
        if isinstance(outputs, dict) and task in KEYS:
            returned = next((outputs[k] for k in KEYS[task] if k in outputs), None)
        if keep is None or targets is None or not keep(trainer, returned, inputs, targets):
            self._off = True
            rank_zero_info(_skip_line(task, pl_module, outputs, targets))

    def _keep_multiclass(self, trainer: Trainer, logits: Any, inputs: Any,
                         targets: Tensor) -> bool:
        if not (_is_int(targets) and targets.ndim == 1 and _is_float(logits)
                and logits.ndim == 2 and logits.shape[0] == len(targets)
                and logits.shape[1] >= 2):
            return False
        logits = logits.detach()
        num_classes = logits.shape[1]
        if self.confusion_matrix and num_classes <= self.max_classes:
            if self._confmat is None or self._confmat.num_classes != num_classes:
                self._confmat = MulticlassConfusionMatrix(
                    num_classes, ignore_index=-1, validate_args=False).to(logits.device)
            self._confmat.update(logits, _known_classes(targets, num_classes))
        images = _images(inputs)
        if (self.worst_k > 0 and images is not None and len(images) == len(targets)
                and trainer.is_global_zero):
            self._keep_worst(images, targets, logits)
        return True

    @torch.no_grad()
    def _keep_worst(self, images: Tensor, targets: Tensor, logits: Tensor) -> None:
        """Keep the ``worst_k`` most confident mistakes seen so far, on the device: no
        ``.item()``/``.any()``, so no host sync per step (correct ones score -1)."""
        confidence, predicted = logits.float().softmax(-1).max(-1)
        score = torch.where(predicted != targets, confidence, -1.0)
        new = (images.detach(), targets, predicted, score)
        if self._worst is not None:
            new = tuple(torch.cat([old, part]) for old, part in zip(self._worst, new, strict=True))
        keep = new[3].topk(min(self.worst_k, len(new[3]))).indices
        self._worst = tuple(part[keep] for part in new)  # type: ignore[assignment]

    def _keep_multilabel(self, trainer: Trainer, scores: Any, inputs: Any,
                         targets: Tensor) -> bool:
        if not (_is_float(scores) and targets.ndim == 2 and scores.shape == targets.shape):
            return False
        labels = targets.shape[1]
        if labels > self.max_classes:
            return True
        if self._label_scores is None or self._label_scores["precision"].num_labels != labels:
            self._label_scores = MetricCollection({
                "precision": MultilabelPrecision(labels, average=None, validate_args=False),
                "recall": MultilabelRecall(labels, average=None, validate_args=False),
            }).to(scores.device)
        # Logits or probabilities alike: torchmetrics applies a sigmoid to values outside [0, 1].
        self._label_scores.update(scores.detach(), (targets >= 0.5).long())
        return True

    def _keep_regression(self, trainer: Trainer, predicted: Any, inputs: Any,
                         targets: Tensor) -> bool:
        if not (_is_float(predicted) and _is_float(targets) and targets.ndim in (1, 2)
                and predicted.ndim in (1, 2) and len(predicted) == len(targets)
                and predicted.numel() == targets.numel()):
            return False
        kept = sum(len(p) for p, _ in self._points)
        if trainer.is_global_zero and kept < self.max_points:
            rows = len(targets)
            take = self.max_points - kept
            self._points.append((predicted.detach().reshape(rows, -1)[:take].float(),
                                 targets.detach().reshape(rows, -1)[:take].float()))
        return True

    def _keep_segmentation(self, trainer: Trainer, returned: Any, inputs: Any,
                           targets: Tensor) -> bool:
        images = _images(inputs)
        if not (isinstance(returned, Tensor) and _masks_fit(targets, images)):
            return False
        if (_is_float(returned) and returned.ndim == 4 and len(returned) == len(targets)
                and returned.shape[2:] == targets.shape[1:]):
            predicted = returned.argmax(1)
        elif _is_int(returned) and returned.shape == targets.shape:
            predicted = returned
        else:
            return False
        kept = sum(len(m) for _, m, _ in self._masks)
        if trainer.is_global_zero and kept < self.mask_images:
            take = self.mask_images - kept
            assert images is not None
            self._masks.append((images[:take].detach(), targets[:take].detach(),
                                predicted[:take].detach()))
        return True

    # -- validation: draw once per epoch -------------------------------------------------------
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        title = f"validation, epoch {trainer.current_epoch}"
        # Every rank computes the metrics: a collective under DDP.
        if self._confmat is not None and self._confmat.update_count > 0:
            matrix = self._confmat.compute()
            self._confmat.reset()
            if trainer.is_global_zero and _writers(trainer):
                names = _names(trainer, pl_module, "class_names")
                _log_image(trainer, "images/val_confusion_matrix",
                           confusion_matrix_image(matrix, names, title))
        if self._label_scores is not None and self._label_scores["precision"].update_count > 0:
            scores = self._label_scores.compute()
            self._label_scores.reset()
            if trainer.is_global_zero and _writers(trainer):
                names = _names(trainer, pl_module, "class_names")
                _log_image(trainer, "images/val_precision_recall", precision_recall_image(
                    scores["precision"], scores["recall"], names, title))
        if trainer.is_global_zero and _writers(trainer):
            self._log_worst(trainer, pl_module)
            self._log_scatter(trainer, pl_module, title)
            self._log_masks(trainer)
        self._worst, self._points, self._masks = None, [], []

    def _log_worst(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._worst is None:
            return
        images, targets, predicted, score = self._worst
        wrong = score >= 0
        if not wrong.any():
            return
        names = _names(trainer, pl_module, "class_names")
        labels = [f"{_name(names, t)}>{_name(names, p)} {s:.2f}" for t, p, s in zip(
            targets[wrong].tolist(), predicted[wrong].tolist(), score[wrong].tolist(),
            strict=True)]
        mean, std = _normalize_stats(trainer.datamodule, train=False)
        picture = labelled_grid(images[wrong], labels, max_images=self.worst_k, mean=mean,
                                std=std)
        _log_image(trainer, "images/val_worst", picture)

    def _log_scatter(self, trainer: Trainer, pl_module: LightningModule, title: str) -> None:
        if not self._points:
            return
        predicted = torch.cat([p for p, _ in self._points])
        true = torch.cat([t for _, t in self._points])
        names = _names(trainer, pl_module, "target_names")
        _log_image(trainer, "images/val_scatter", scatter_image(predicted, true, names, title))

    def _log_masks(self, trainer: Trainer) -> None:
        if not self._masks:
            return
        images, true, predicted = (torch.cat(parts) for parts in zip(*self._masks, strict=True))
        mean, std = _normalize_stats(trainer.datamodule, train=False)
        _log_image(trainer, "images/val_masks", mask_overlays(images, true, predicted, mean, std))


def task_of(trainer: Trainer, pl_module: LightningModule, targets: Any) -> str | None:
    """The datamodule's ``task``, else the module's ``task`` hyperparameter, else multiclass
    for 1-D int64 targets (class indices), else None."""
    task = getattr(trainer.datamodule, "task", None) or getattr(pl_module, "hparams", {}).get(
        "task")
    if task:
        return str(task)
    if isinstance(targets, Tensor) and targets.ndim == 1 and targets.dtype == torch.int64:
        return "multiclass"
    return None


def _skip_line(task: str | None, pl_module: LightningModule, outputs: Any,
               targets: Any) -> str:
    """The one line saying why there are no validation pictures, and what would give them."""
    if task not in RETURNS:
        known = ", ".join(RETURNS)
        return (f"TensorBoardImages: no validation pictures for task {task}: they are drawn "
                f"for (inputs, targets) batches of the tasks {known} (the datamodule's `task`)")
    if targets is None:
        return (f"TensorBoardImages: no {PICTURES[task]}: the validation batches have no "
                "targets; they need (inputs, targets) batches")
    keys = " or ".join(f"'{k}'" for k in KEYS[task])
    return (f"TensorBoardImages: no {PICTURES[task]} ({task}): validation_step must return "
            f"{RETURNS[task]} (or a dict with them under {keys}); "
            f"{type(pl_module).__name__}'s returned {_describe(outputs)} for targets "
            f"{_describe(targets)}")


def confusion_matrix_image(
    matrix: Tensor, class_names: Sequence[str], title: str = ""
) -> Image.Image:
    """A confusion matrix (rows true, columns predicted) drawn with Pillow: counts in the cells,
    each cell shaded by its share of the row, class names on the rows and (when they fit) the
    columns; columns are otherwise numbered in the rows' order."""
    counts = matrix.detach().cpu().long()
    n = len(counts)
    fractions = counts.float() / counts.sum(1, keepdim=True).clamp_min(1)
    cell = max(12, min(36, 640 // max(n, 1)))
    names = [str(_name(class_names, i)) for i in range(n)]
    char_w = 6
    left = min(max(len(name) for name in names), 14) * char_w + 28 if n else 40
    columns_fit = all(len(name) * char_w <= cell - 2 for name in names)
    top = 46
    width = max(left + n * cell + 10, 360)
    height = top + n * cell + 24
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), title, fill="black")
    draw.text((4, 16), "rows: true class, columns: predicted, shade: share of the row",
              fill=(90, 90, 90))
    for j in range(n):
        label = names[j] if columns_fit else str(j)
        draw.text((left + j * cell + 2, top - 14), label[: max(1, (cell - 2) // char_w)],
                  fill="black")
    for i in range(n):
        y = top + i * cell
        row_label = names[i][:14] if columns_fit else f"{i} {names[i][:14]}"
        draw.text((4, y + cell // 2 - 6), row_label, fill="black")
        for j in range(n):
            x = left + j * cell
            f = float(fractions[i, j])
            shade = tuple(int(255 - (255 - c) * f) for c in (8, 48, 107))
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade,
                           outline=(200, 200, 200))
            count = int(counts[i, j])
            text = str(count)
            if count and len(text) * char_w <= cell - 2:
                draw.text((x + (cell - len(text) * char_w) // 2, y + cell // 2 - 6), text,
                          fill="white" if f > 0.5 else "black")
    return image


def precision_recall_image(
    precision: Tensor, recall: Tensor, label_names: Sequence[str], title: str = ""
) -> Image.Image:
    """Each label's precision (upper bar) and recall (lower bar), 0 to 1, with the values:
    which labels the model misses (low recall) or over-predicts (low precision)."""
    precision, recall = (v.detach().float().cpu().nan_to_num(0.0) for v in (precision, recall))
    n = len(precision)
    names = [str(_name(label_names, i))[:16] for i in range(n)]
    char_w, row, bar = 6, 20, 300
    left = max((len(name) for name in names), default=1) * char_w + 10
    top = 34
    image = Image.new("RGB", (left + bar + 130, top + n * row + 8), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), title, fill="black")
    draw.text((4, 16), "per label: precision (upper bar), recall (lower bar), threshold 0.5",
              fill=(90, 90, 90))
    for i, (name, p, r) in enumerate(zip(names, precision.tolist(), recall.tolist(),
                                         strict=True)):
        y = top + i * row
        draw.text((4, y + 4), name, fill="black")
        draw.rectangle([left, y + 1, left + bar, y + row - 2], outline=(220, 220, 220))
        draw.rectangle([left, y + 2, left + round(p * bar), y + row // 2 - 1], fill=(8, 48, 107))
        draw.rectangle([left, y + row // 2, left + round(r * bar), y + row - 3],
                       fill=(245, 130, 48))
        draw.text((left + bar + 6, y + 4), f"P {p:.2f}  R {r:.2f}", fill="black")
    return image


def scatter_image(
    predicted: Tensor, true: Tensor, target_names: Sequence[str] = (), title: str = "",
    max_panels: int = 4,
) -> Image.Image:
    """Predicted (up) against true (right) values, one panel per target column (at most
    ``max_panels``), both axes on one scale so perfect predictions lie on the grey diagonal;
    each panel names its column and its mean absolute error."""
    predicted = predicted.detach().float().cpu().reshape(len(predicted), -1)
    true = true.detach().float().cpu().reshape(len(true), -1)
    panels = min(predicted.shape[1], max_panels)
    size, gap, top = 220, 30, 50
    image = Image.new("RGB", (gap + panels * (size + gap), top + size + 24), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 2), title, fill="black")
    draw.text((4, 16), "x: true, y: predicted (same scale); grey: predicted = true",
              fill=(90, 90, 90))
    for j in range(panels):
        box = (gap + j * (size + gap), top, size)
        _scatter_panel(draw, predicted[:, j], true[:, j], box, str(_name(target_names, j)))
    return image


def _scatter_panel(draw: ImageDraw.ImageDraw, predicted: Tensor, true: Tensor,
                   box: tuple[int, int, int], name: str) -> None:
    left, top, size = box
    finite = torch.isfinite(predicted) & torch.isfinite(true)
    predicted, true = predicted[finite], true[finite]
    draw.rectangle([left, top, left + size, top + size], outline=(160, 160, 160))
    draw.line([left, top + size, left + size, top], fill=(200, 200, 200))
    if not len(true):
        draw.text((left, top - 14), f"{name}: no finite values", fill="black")
        return
    low = min(float(predicted.min()), float(true.min()))
    high = max(float(predicted.max()), float(true.max()))
    span = max(high - low, 1e-12)
    xs = (left + (true - low) / span * size).tolist()
    ys = (top + size - (predicted - low) / span * size).tolist()
    for x, y in zip(xs, ys, strict=True):
        draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=(8, 48, 107))
    mae = float((predicted - true).abs().mean())
    draw.text((left, top - 14), f"{name[:20]}  MAE {mae:.3g}", fill="black")
    draw.text((left, top + size + 4), f"{low:.3g} .. {high:.3g}", fill=(90, 90, 90))


def mask_overlays(
    images: Tensor, true_masks: Tensor, predicted_masks: Tensor,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> Image.Image:
    """One row per image: the image, its true mask over it, the predicted mask over it (class
    0 uncoloured, as background usually is; classes 1, 2, ... one colour each)."""
    rgb = _unit_rgb(images, mean, std)
    true, predicted = _overlay(rgb, true_masks), _overlay(rgb, predicted_masks)
    tiles = torch.stack([tile for triple in zip(rgb, true, predicted, strict=True)
                         for tile in triple])
    return labelled_grid(tiles, ["image", "true", "predicted"] * len(rgb),
                         max_images=len(tiles), nrow=3)


def _overlay(rgb: Tensor, masks: Tensor, alpha: float = 0.5) -> Tensor:
    """Masks ``(N, H, W)`` drawn over ``(N, 3, H, W)`` images in [0, 1]."""
    masks = masks.detach().cpu().long()
    colours = PALETTE[(masks - 1).clamp_min(0) % len(PALETTE)].permute(0, 3, 1, 2)
    weight = alpha * (masks > 0).unsqueeze(1).float()
    return rgb * (1 - weight) + colours * weight


def _unit_rgb(images: Tensor, mean: Sequence[float] | None,
              std: Sequence[float] | None) -> Tensor:
    """Images as RGB floats in [0, 1] (un-normalised, or min-max scaled), as
    ``labelled_grid`` shows them, for drawing masks over them."""
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        images = images.float() / 255
    elif mean is not None and std is not None:
        images = images * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    elif images.numel() and (images.min() < 0 or images.max() > 1):
        images = (images - images.min()) / (images.max() - images.min()).clamp_min(1e-12)
    images = images.float().clamp(0, 1)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]


def _inputs_and_targets(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch; a batch that is the inputs alone (task none, and a
    tuple of one) has no targets."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], batch[1] if len(batch) > 1 else None
    return None, None


def _images(inputs: Any) -> Tensor | None:
    """The inputs if they are a batch of images (B, C, H, W)."""
    return inputs if isinstance(inputs, Tensor) and inputs.ndim == 4 else None


def _is_float(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point()


def _is_int(value: Any) -> bool:
    return (isinstance(value, Tensor) and not value.is_floating_point()
            and not value.is_complex() and value.dtype != torch.bool)


def _masks_fit(masks: Any, images: Tensor | None) -> bool:
    """Integer masks ``(N, H, W)`` for images ``(N, C, H, W)`` of the same size."""
    return (_is_int(masks) and masks.ndim == 3 and images is not None
            and len(images) == len(masks) and images.shape[-2:] == masks.shape[-2:])


def _known_classes(targets: Tensor, num_classes: int) -> Tensor:
    """Targets outside [0, num_classes) as -1, which the confusion matrix ignores: e.g. labels
    the logits have no column for; on the device, without a sync."""
    return torch.where((targets >= 0) & (targets < num_classes), targets, -1)


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    return type(value).__name__


def _names(trainer: Trainer, pl_module: LightningModule, key: str) -> list[str]:
    """The datamodule's ``class_names`` or ``target_names``, else the module's."""
    names = getattr(trainer.datamodule, key, None)
    if not names:
        names = getattr(pl_module, "hparams", {}).get(key)
    return [str(n) for n in names or []]


def _name(names: Sequence[str], index: int) -> str:
    return str(names[index]) if 0 <= index < len(names) else str(index)


def _normalize_stats(
    datamodule: Any, train: bool
) -> tuple[list[float] | None, list[float] | None]:
    """Mean and std of the first ``Normalize`` in the datamodule's batch or sample transforms
    for that split, to show images as they were before normalisation."""
    prefix = "train" if train else "eval"
    for attribute in (f"{prefix}_batch_transforms", f"{prefix}_transforms"):
        found = _find_normalize(getattr(datamodule, attribute, None))
        if found is not None:
            return found
    return None, None


def _find_normalize(transform: Any) -> tuple[list[float], list[float]] | None:
    for step in flatten_transforms(transform):
        # v1 and v2 Normalize and subclasses (datamodules.batch_transforms.ToFloatNormalize).
        if isinstance(step, (v2.Normalize, transforms.Normalize)):
            return list(step.mean), list(step.std)
    return None


def _writers(trainer: Trainer) -> list[Any]:
    return [logger.experiment for logger in trainer.loggers
            if isinstance(logger, TensorBoardLogger)]


def _log_image(trainer: Trainer, tag: str, picture: Image.Image) -> None:
    """The picture as a PNG image summary at ``trainer.global_step``, encoded here at zlib level
    1 and handed to each writer's ``file_writer``. ``add_image`` would take an array, rescale it
    through float32 and encode at level 6: the same picture at several times the cost, every
    validation epoch."""
    writers = _writers(trainer)
    if not writers:
        return
    picture = picture.convert("RGB")
    png = io.BytesIO()
    picture.save(png, format="PNG", compress_level=1)
    summary = Summary(value=[Summary.Value(tag=tag, image=Summary.Image(
        height=picture.height, width=picture.width, colorspace=3,
        encoded_image_string=png.getvalue()))])
    for writer in writers:
        if writer.file_writer is None:  # closed: add_image reopens it
            writer.add_image(tag, np.asarray(picture), global_step=trainer.global_step,
                             dataformats="HWC")
        else:
            writer.file_writer.add_summary(summary, trainer.global_step)
