"""Pictures in TensorBoard's Images tab: what the model is fed, and where it goes wrong.

The validation pictures (confusion matrix, worst mistakes) need the logits of each validation
batch, one row per input: ``(batch, classes)``. They are taken from what ``validation_step``
returned when that is such a tensor or a dict with such a tensor under ``"logits"`` (no extra
cost; ``ImageClassifier`` returns its logits). Otherwise the callback runs
``pl_module(inputs)`` itself, without gradients: a second forward pass per validation batch, so
``forward`` must map the batch's inputs to logits (the contract prediction and export rely on
too). If it fails or returns anything else, one line says so and the run continues without
those pictures. Batches are ``(inputs, targets)`` with 1-D integer targets; batches of any
other shape get no validation pictures, silently.
"""

from __future__ import annotations

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
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision import transforms
from torchvision.transforms import v2

from datamodules.batch_transforms import flatten_transforms
from datamodules.show_batch import labelled_grid


class TensorBoardImages(Callback):
    """Logs, to every ``TensorBoardLogger`` of the run and from rank 0 only:

    * ``images/train_batch``: the first training batch of fit *after* augmentation (the batch
      transforms run on the device before this callback sees it), labelled with class names.
    * ``images/val_confusion_matrix``: once per validation epoch, rows = true class, columns =
      predicted, counts in the cells, colour = fraction of the row. torchmetrics'
      ``MulticlassConfusionMatrix``, so under DDP it counts every rank's images.
    * ``images/val_worst``: the ``worst_k`` validation images predicted wrong with the highest
      confidence, labelled ``true>predicted confidence``. Under DDP these come from rank 0's
      shard of the validation set.

    The validation pictures use the logits of each validation batch, ``(batch, classes)``:
    what ``validation_step`` returned, if it is such a tensor or a dict with one under
    ``"logits"`` (free: ``ImageClassifier`` returns its logits); otherwise
    ``pl_module(inputs)``, called here under ``torch.no_grad()``, so ``forward`` must map a
    batch's inputs to one row of logits per input (as prediction and export expect), at the
    cost of a second forward pass. If that call fails or returns something else, rank 0 prints
    one line saying what is needed, the validation pictures are off for the rest of the run and
    training goes on. Batches must be ``(inputs, targets)`` with 1-D integer targets; for
    other batches there are no validation pictures, without a message.

    The cost per validation step (beyond that forward pass, when needed) is a softmax, a
    ``topk`` over ``worst_k + batch`` scores, kept on the device without a host sync, and a
    torchmetrics confusion-matrix update; drawing and PNG encoding happen once per epoch. Each
    grid holds at most ``max_images`` images, and the confusion matrix is skipped above
    ``max_classes`` classes. Float images are un-normalised with the ``Normalize`` found in the
    datamodule's transforms, else min-max scaled.

    Args:
        train_grid: log the training batch at the start of fit.
        confusion_matrix: log the confusion matrix each validation epoch.
        worst_k: how many misclassified images to show (0: none).
        max_images: at most this many images in the training grid.
        max_classes: no confusion matrix above this many classes (it would be unreadable).
    """

    def __init__(
        self,
        train_grid: bool = True,
        confusion_matrix: bool = True,
        worst_k: int = 16,
        max_images: int = 32,
        max_classes: int = 50,
    ) -> None:
        self.train_grid = train_grid
        self.confusion_matrix = confusion_matrix
        self.worst_k = worst_k
        self.max_images = max_images
        self.max_classes = max_classes
        self._train_grid_due = False
        self._confmat: MulticlassConfusionMatrix | None = None
        self._worst: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        # Set once the module's forward could not give logits: no more tries in this run.
        self._no_logits = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._no_logits = False

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
        if images is None or targets is None or not trainer.is_global_zero or not _writers(trainer):
            return
        names = _class_names(trainer, pl_module)
        labels = [_name(names, t) for t in targets[: self.max_images].tolist()]
        mean, std = _normalize_stats(trainer.datamodule, train=True)
        picture = labelled_grid(images, labels, max_images=self.max_images, mean=mean, std=std)
        _log_image(trainer, "images/train_batch", picture)

    # -- validation: confusion matrix and worst mistakes --------------------------------------
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._worst = None
        if self._confmat is not None:
            self._confmat.reset()

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or self._no_logits:
            return
        inputs, targets = _inputs_and_targets(batch)
        if targets is None:
            return
        logits = _batch_logits(outputs, len(targets))
        if logits is None:
            logits = self._forward_logits(trainer, pl_module, inputs, len(targets))
            if logits is None:
                return
        images = _images(inputs)
        num_classes = logits.shape[-1]
        if self.confusion_matrix and num_classes <= self.max_classes:
            if self._confmat is None or self._confmat.num_classes != num_classes:
                self._confmat = MulticlassConfusionMatrix(num_classes).to(logits.device)
            self._confmat.update(logits, targets)
        if self.worst_k > 0 and images is not None and trainer.is_global_zero:
            self._keep_worst(images, targets, logits)

    def _forward_logits(self, trainer: Trainer, pl_module: LightningModule, inputs: Any,
                        batch: int) -> Tensor | None:
        """``pl_module(inputs)`` as validation runs it, if that is ``(batch, classes)`` logits;
        otherwise None, after saying once what is missing and turning these pictures off."""
        try:
            with torch.no_grad(), trainer.precision_plugin.val_step_context():
                result = pl_module(inputs)
        except Exception as error:  # a user's forward may raise anything; training goes on
            got = f"raised {type(error).__name__}: {error}".splitlines()[0]
        else:
            logits = _batch_logits(result, batch, in_dict=False)
            if logits is not None:
                return logits
            shape = f" of shape {tuple(result.shape)}" if isinstance(result, Tensor) else ""
            got = f"returned {type(result).__name__}{shape}"
        self._no_logits = True
        rank_zero_info(
            f"TensorBoardImages: no confusion matrix or worst-mistakes grid: they need "
            f"(batch, classes) logits from validation_step's return value or from "
            f"{type(pl_module).__name__}'s forward(inputs), which {got}")
        return None

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

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        names = _class_names(trainer, pl_module)
        if self._confmat is not None and self._confmat.update_count > 0:
            matrix = self._confmat.compute()  # every rank: a collective under DDP
            self._confmat.reset()
            if trainer.is_global_zero and _writers(trainer):
                title = f"validation, epoch {trainer.current_epoch}"
                _log_image(trainer, "images/val_confusion_matrix",
                           confusion_matrix_image(matrix, names, title))
        if self._worst is not None and trainer.is_global_zero and _writers(trainer):
            images, targets, predicted, score = self._worst
            wrong = score >= 0
            if wrong.any():
                labels = [f"{_name(names, t)}>{_name(names, p)} {s:.2f}" for t, p, s in zip(
                    targets[wrong].tolist(), predicted[wrong].tolist(), score[wrong].tolist(),
                    strict=True)]
                mean, std = _normalize_stats(trainer.datamodule, train=False)
                picture = labelled_grid(images[wrong], labels, max_images=self.worst_k,
                                        mean=mean, std=std)
                _log_image(trainer, "images/val_worst", picture)
        self._worst = None


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


def _inputs_and_targets(batch: Any) -> tuple[Any, Tensor | None]:
    """``(inputs, targets)`` of a classification batch (1-D integer targets), else ``(None,
    None)``."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        return None, None
    inputs, targets = batch[0], batch[1]
    if (not isinstance(targets, Tensor) or targets.ndim != 1
            or targets.is_floating_point() or targets.is_complex()):
        return None, None
    return inputs, targets


def _images(inputs: Any) -> Tensor | None:
    """The inputs if they are a batch of images (B, C, H, W)."""
    return inputs if isinstance(inputs, Tensor) and inputs.ndim == 4 else None


def _batch_logits(value: Any, batch: int, in_dict: bool = True) -> Tensor | None:
    """``value`` (or, with ``in_dict``, its ``"logits"`` entry) if it is a float tensor of
    shape ``(batch, classes)`` with at least two classes."""
    if in_dict and isinstance(value, dict):
        value = value.get("logits")
    if (isinstance(value, Tensor) and value.ndim == 2 and value.shape[0] == batch
            and value.shape[1] >= 2 and value.is_floating_point()):
        return value.detach()
    return None


def _class_names(trainer: Trainer, pl_module: LightningModule) -> list[str]:
    names = getattr(trainer.datamodule, "class_names", None)
    if not names:
        names = getattr(pl_module, "hparams", {}).get("class_names")
    return list(names or [])


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
