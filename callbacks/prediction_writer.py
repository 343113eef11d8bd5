"""Predictions to one CSV: path, predicted class name and a probability column per class.

The contract with the model is the one ``predict`` and ``models.export`` share: its
``predict_step`` (by default Lightning's ``self(batch)``, i.e. ``forward``) returns one row of
logits or probabilities per input. Rows that are not already probabilities (in [0, 1], summing
to 1) go through a softmax.

Each rank keeps its own predictions (they are small: one row of probabilities per image) and
they are gathered on rank 0 at the end, which writes the file. Gathering, rather than per-rank
part files merged from disk, needs no file system shared between nodes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from datamodules.validation import DataError


class PredictionCSVWriter(BasePredictionWriter):
    """Writes ``output_path`` with columns ``path``, ``label`` (the class name) and
    ``prob_<class>`` for every class, one row per predicted input, in input order.

    Rows are keyed by the dataset index Lightning reports for each batch, so an input a
    distributed sampler gave to two ranks is written once, and ``path`` comes from the predict
    dataset's ``paths`` where it has them. Class names come from the model's ``class_names``
    hyperparameter, else the datamodule's, else the column index. Inputs the datamodule skipped
    as unreadable (``predict_problems``) are listed in ``<output stem>.skipped.csv``. Only acts
    in ``predict``.

    Args:
        output_path: the CSV; None writes ``predictions.csv`` into the checkpoint's run folder
            (beside ``checkpoints/``), or beside the checkpoint.
    """

    def __init__(self, output_path: str | Path | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_path = Path(output_path) if output_path is not None else None
        self.target = self.output_path  # where this predict run writes
        self._indices: list[Tensor] = []
        self._probs: list[Tensor] = []
        self.written = ""  # what was written where, for the caller to print once the run ends

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._indices, self._probs = [], []
        self.target = self.output_path or default_output(trainer.ckpt_path or "predictions.csv")

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        rows = len(batch_indices) if batch_indices is not None else -1
        if not isinstance(prediction, Tensor) or prediction.ndim != 2 or len(prediction) != rows:
            got = (f"shape {tuple(prediction.shape)}" if isinstance(prediction, Tensor)
                   else type(prediction).__name__)
            raise DataError(
                f"predict: {type(pl_module).__name__}'s predict_step (or forward) returned "
                f"{got} for a batch of {rows}; the CSV needs one row of logits or "
                "probabilities per input, shape (batch, classes)")
        self._indices.append(torch.as_tensor(batch_indices, dtype=torch.long))
        self._probs.append(as_probabilities(prediction.detach().to("cpu", torch.float32)))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        indices = torch.cat(self._indices) if self._indices else torch.empty(0, dtype=torch.long)
        probs = torch.cat(self._probs) if self._probs else torch.empty(0)
        self._indices, self._probs = [], []
        parts = [(indices, probs)]
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] | None = [None] * trainer.world_size if trainer.is_global_zero \
                else None
            dist.gather_object((indices, probs), gathered, dst=0)
            parts = gathered or []
        if trainer.is_global_zero:
            self.write(trainer, pl_module, parts)

    def write(self, trainer: Trainer, pl_module: LightningModule,
              parts: list[tuple[Tensor, Tensor]]) -> None:
        indices = torch.cat([i for i, _ in parts]).numpy()
        probs = torch.cat([p for _, p in parts if p.numel()]).numpy()
        class_names = _class_names(trainer, pl_module, probs.shape[1])
        dataset = _predict_dataset(trainer)
        paths = getattr(dataset, "paths", None)
        table = pd.DataFrame(probs, columns=[f"prob_{name}" for name in class_names])
        table.insert(0, "label", [class_names[i] for i in probs.argmax(axis=1)])
        table.insert(0, "path", [str(paths[i]) for i in indices] if paths else indices)
        table.insert(0, "_index", indices)
        table = table.drop_duplicates("_index").sort_values("_index").drop(columns="_index")
        assert self.target is not None
        self.target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(table, self.target)
        message = f"Predictions: {len(table)} rows written to {self.target}"
        if paths is not None and len(table) != len(paths):
            # e.g. limit_predict_batches, or batches whose second element is not the index
            rank_zero_warn(f"{len(table)} predictions for {len(paths)} inputs")
        skipped = getattr(trainer.datamodule, "predict_problems", None) or []
        if skipped:
            skipped_path = self.target.with_name(self.target.stem + ".skipped.csv")
            _write_atomically(pd.DataFrame([(str(p), why) for p, why in skipped],
                                           columns=["path", "reason"]), skipped_path)
            message += f"; {len(skipped)} unreadable input(s) listed in {skipped_path}"
        self.written = message


def as_probabilities(rows: Tensor) -> Tensor:
    """Rows already in [0, 1] that sum to 1 are kept; anything else is taken as logits."""
    is_probability = bool(((rows >= 0) & (rows <= 1)).all()) and torch.allclose(
        rows.sum(dim=1), torch.ones(len(rows)), atol=1e-3)
    return rows if is_probability else rows.softmax(dim=1)


def default_output(ckpt_path: str | Path) -> Path:
    """``<run>/predictions.csv`` for a checkpoint in ``<run>/checkpoints/``, else beside it."""
    folder = Path(ckpt_path).resolve().parent
    if folder.name == "checkpoints":
        folder = folder.parent
    return folder / "predictions.csv"


def class_names_in(ckpt_path: str | Path) -> list[str] | None:
    """The class names a checkpoint was trained on: the model's ``class_names``
    hyperparameter, else the datamodule state saved in it (any entry with ``class_names``)."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    names = (checkpoint.get("hyper_parameters") or {}).get("class_names")
    for value in checkpoint.values():
        if not names and isinstance(value, dict) and isinstance(value.get("class_names"), list):
            names = value["class_names"]
    return [str(n) for n in names] if names else None


def _class_names(trainer: Trainer, pl_module: LightningModule, num_classes: int) -> list[str]:
    """The checkpoint's class names (model hyperparameters), else the datamodule's, else
    the indices; the model's are the ones its outputs were trained against."""
    for names in (pl_module.hparams.get("class_names"),
                  getattr(trainer.datamodule, "class_names", None)):
        if names and len(names) == num_classes:
            return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def _predict_dataset(trainer: Trainer) -> Any:
    loaders = trainer.predict_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    return getattr(loader, "dataset", None)


def _write_atomically(table: pd.DataFrame, path: Path) -> None:
    # A reader (or a killed run) never sees a half-written file.
    partial = path.with_name(f".{path.name}.partial")
    table.to_csv(partial, index=False)
    os.replace(partial, path)
