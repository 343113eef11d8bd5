"""Predictions to one CSV, and one file per input where an output is too large for a row.

What is written is what the module's ``predict_step`` returns, as it is: the module knows what
its outputs mean (probabilities, values in a target's units, masks, embeddings), and a writer
that guessed, e.g. a softmax over anything with two dimensions, would turn a house price into a
probability. ``ImageClassifier`` returns probabilities, ``Regressor`` values in the targets'
units, ``Segmenter`` masks; a module of your own writes whatever its ``predict_step`` (by
default Lightning's ``self(batch)``) returns.

Each output form becomes (N inputs per batch; "names" are the output names, below):

* a tensor ``(N,)``: one column, named by the output name when there is exactly one, else
  ``prediction``;
* a tensor ``(N, K)``: K columns, named ``prob_<name>`` for the classification tasks
  (multiclass, multilabel) and ``<name>`` for the others when there are K names, else
  ``output_0`` ... ``output_<K-1>``;
* a dict of tensors: each entry as above, under its key: ``key`` for ``(N,)``, ``key_<name>``
  (or ``key_<j>``) for ``(N, K)``;
* an output with two or more dimensions per input (``(N, H, W)`` masks, ``(N, C, H, W)``
  reconstructions or feature maps): one file per input in the folder ``<CSV stem>/`` beside the
  CSV (a dict entry: ``<CSV stem>/<key>/``), named ``<dataset index>[_<input file stem>]``, and
  a column with its path relative to the CSV's folder (``mask`` for segmentation, else
  ``output_file``; a dict entry: its key). Integer 2-D outputs with values in [0, 65535]
  become PNG files, 8-bit when every value is below 256, else 16-bit: a mask opens in any image
  viewer and ``numpy.array(PIL.Image.open(f))`` gives the values back. Anything else is a
  ``.npy`` file (``numpy.save``; ``numpy.load`` reads it without torch; bfloat16, which numpy
  lacks, is saved as float32, exactly).

The first column is ``path`` (the predict dataset's ``paths``), or ``row`` (the dataset index)
for data without files, such as a table. When the task is known (the module's ``task``
hyperparameter, else the datamodule's ``task``), a classification output ``(N, K)`` also gets,
right after it: ``label``, the class name of the largest value (multiclass), or ``labels``, the
names of every label whose probability is at least ``threshold``, joined by ``;``
(multilabel). The output names are the module's ``target_names`` (regression) or
``class_names`` hyperparameter, else the datamodule's ``output_names`` / ``class_names`` /
``target_names``; names are used only where their number matches the output's width.

Under DDP each rank keeps its own rows (small: a few numbers and a file name per input) and
they are gathered on rank 0 at the end, which writes the CSV; gathering needs no file system
shared between nodes for the CSV. Per-input files are written by the rank that computed them,
at the end of each batch: memory stays at one batch, however many inputs there are, and no large
tensor goes through the gather; on several nodes the CSV's folder must then be on a file system
they share (where the CSV's readers will look for the files). An input a distributed sampler
gave to two ranks is one row, and its file, written twice with the same content, is replaced
atomically.
"""

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from torch import Tensor

from errors import DataError

CLASSIFICATION = ("multiclass", "multilabel")
# Dict entries a classification module may put its probabilities under, for label(s).
SCORE_KEYS = ("probs", "probabilities", "logits", "scores")
Outputs = dict[str, Tensor]  # "" is the key of a plain tensor output
Kept = dict[str, "Tensor | list[str]"]  # per output: the rows' values, or their files


class PredictionCSVWriter(BasePredictionWriter):
    """Writes ``predict_step``'s outputs, as they are, to ``output_path`` (one row per input,
    in input order) and per-input files beside it; see the module's docstring for the columns
    and files each output form gives.

    Rows are keyed by the dataset index Lightning reports for each batch, so an input a
    distributed sampler gave to two ranks is written once. Inputs the datamodule skipped as
    unreadable (``predict_problems``) are listed in ``<output stem>.skipped.csv``. Only acts in
    ``predict``; ``written`` then says what was written where.

    Args:
        output_path: the CSV; None writes ``predictions.csv`` into the checkpoint's run folder
            (beside ``checkpoints/``), or beside the checkpoint.
        threshold: multilabel only: a label is listed in ``labels`` when its probability is at
            least this.
    """

    def __init__(self, output_path: str | Path | None = None, threshold: float = 0.5) -> None:
        super().__init__(write_interval="batch")
        self.output_path = Path(output_path) if output_path is not None else None
        self.threshold = threshold
        self.target = self.output_path  # where this predict run writes
        self._indices: list[Tensor] = []
        self._kept: list[Kept] = []
        self.written = ""  # what was written where, for the caller to print once the run ends

    def report(self, trainer: Trainer) -> None:
        """Say where the predictions went (train.py calls it after the progress bar)."""
        if self.written:  # only on rank 0, which wrote them
            print(self.written)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._indices, self._kept = [], []
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
        outputs = as_outputs(prediction, rows, type(pl_module).__name__)
        indices = torch.as_tensor(batch_indices, dtype=torch.long)
        stems = _input_stems(_predict_dataset(trainer), indices)
        kept: Kept = {}
        for key, value in outputs.items():
            value = value.detach().cpu()
            if value.ndim >= 3:  # two or more dimensions per input: a file each
                kept[key] = self._write_files(key, value, indices, stems)
            else:
                kept[key] = value
        self._indices.append(indices)
        self._kept.append(kept)

    def _write_files(self, key: str, values: Tensor, indices: Tensor,
                     stems: Sequence[str]) -> list[str]:
        assert self.target is not None
        folder = Path(self.target.stem, key) if key else Path(self.target.stem)
        (self.target.parent / folder).mkdir(parents=True, exist_ok=True)
        names = []
        for value, index, stem in zip(values, indices.tolist(), stems, strict=True):
            name = f"{index:06d}_{stem}" if stem else f"{index:06d}"
            names.append((folder / save_output_file(value, self.target.parent / folder / name)
                          ).as_posix())
        return names

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        part = (torch.cat(self._indices) if self._indices else torch.empty(0, dtype=torch.long),
                _concat(self._kept))
        self._indices, self._kept = [], []
        parts = [part]
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] | None = [None] * trainer.world_size if trainer.is_global_zero \
                else None
            dist.gather_object(part, gathered, dst=0)
            parts = gathered or []
        if trainer.is_global_zero:
            self.write(trainer, pl_module, parts)

    def write(self, trainer: Trainer, pl_module: LightningModule,
              parts: list[tuple[Tensor, Kept]]) -> None:
        """The CSV (and the skipped list) from every rank's rows."""
        indices = torch.cat([i for i, _ in parts])
        outputs = _concat([kept for _, kept in parts])
        task = task_of(trainer, pl_module)
        dataset = _predict_dataset(trainer)
        paths = getattr(dataset, "paths", None)
        _warn_if_not_probabilities(outputs, task)
        table = prediction_table(indices, outputs, paths=paths, task=task,
                                 output_names=output_names(trainer, pl_module, task),
                                 threshold=self.threshold)
        assert self.target is not None
        self.target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(table, self.target)
        message = f"Predictions: {len(table)} rows written to {self.target}"
        if any(isinstance(v, list) for v in outputs.values()):
            message += f", one file per input in {self.target.with_suffix('')}/"
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


def with_a_prediction_writer(callbacks: list[Callback]) -> list[Callback]:
    """``callbacks``, with a PredictionCSVWriter added where none writes predictions: a
    --config with a whole callbacks list (a run's own config.yaml) replaces the list
    ``configs/predict.yaml`` appends the writer to, and a predict that writes nothing helps
    no one."""
    if any(isinstance(callback, BasePredictionWriter) for callback in callbacks):
        return callbacks
    rank_zero_info("predict: trainer.callbacks has no prediction writer; added "
                   "PredictionCSVWriter (predictions.csv in the checkpoint's run folder)")
    return [*callbacks, PredictionCSVWriter()]


# -- what predict_step returned ----------------------------------------------------------------
def as_outputs(prediction: Any, rows: int, module: str = "the module") -> Outputs:
    """``prediction`` as ``{key: tensor}`` ("" for a plain tensor), each with one entry per
    input; anything else stops predict with one line saying what the CSV can take."""
    outputs = prediction if isinstance(prediction, dict) else {"": prediction}
    for key, value in outputs.items():
        if not isinstance(value, Tensor) or value.ndim == 0 or len(value) != rows:
            where = f"[{key!r}] " if key else ""
            got = (f"shape {tuple(value.shape)}" if isinstance(value, Tensor)
                   else type(value).__name__)
            raise DataError(
                f"predict: {module}'s predict_step (or forward) returned {where}{got} for a "
                f"batch of {rows}; the CSV needs a tensor with one entry per input, (batch, ...), "
                "or a dict of such tensors")
    return {str(key): value for key, value in outputs.items()}


def save_output_file(value: Tensor, stem: Path) -> str:
    """One input's output as ``stem.png`` (integer 2-D, values in [0, 65535]) or ``stem.npy``;
    returns the file's name. Written beside and renamed, so a reader never sees half a file."""
    depth = _png_depth(value)
    if depth is not None:
        array = value.numpy().astype(depth)
        path = stem.with_name(stem.name + ".png")
        _replace_atomically(path, lambda f: Image.fromarray(array).save(f, format="PNG"))
    else:
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            value = value.float()
        path = stem.with_name(stem.name + ".npy")
        _replace_atomically(path, lambda f: np.save(f, value.numpy()))
    return path.name


def _png_depth(value: Tensor) -> type | None:
    """uint8 or uint16 for an integer 2-D output those hold exactly (a PNG), else None."""
    if (value.ndim != 2 or not value.numel() or value.dtype == torch.bool
            or value.is_floating_point() or value.is_complex()):
        return None
    low, high = int(value.min()), int(value.max())
    if low < 0 or high >= 65536:
        return None
    return np.uint8 if high < 256 else np.uint16


# -- the table ---------------------------------------------------------------------------------
def prediction_table(
    indices: Tensor,
    outputs: dict[str, Tensor | list[str]],
    paths: Sequence[Any] | None = None,
    task: str | None = None,
    output_names: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """One row per dataset index (first occurrence kept, sorted): ``path`` or ``row``, the
    task's ``label``/``labels``, then every output's columns, values unchanged."""
    if paths is not None and len(paths):
        columns: dict[str, Any] = {"path": [str(paths[i]) for i in indices.tolist()]}
    else:
        columns = {"row": indices.numpy()}
    columns.update(_task_columns(outputs, task, output_names, threshold))
    for key, value in outputs.items():
        for name, values in _value_columns(key, value, task, output_names).items():
            while name in columns:  # e.g. a target column named "path"
                name = f"output_{name}"
            columns[name] = values
    table = pd.DataFrame(columns)
    table.insert(0, "_index", indices.numpy())
    return table.drop_duplicates("_index").sort_values("_index").drop(columns="_index")


def _value_columns(key: str, value: Tensor | list[str], task: str | None,
                   names: Sequence[str] | None) -> dict[str, Any]:
    if isinstance(value, list):  # file paths
        return {key or ("mask" if task == "segmentation" else "output_file"): value}
    array = _numpy(value)
    if array.ndim == 1:
        single = names[0] if names and len(names) == 1 else "prediction"
        return {key or single: array}
    width = array.shape[1]
    if names and len(names) == width:
        prefix = f"{key}_" if key else ("prob_" if task in CLASSIFICATION else "")
        labels = [f"{prefix}{name}" for name in names]
    else:
        labels = [f"{key}_{j}" if key else f"output_{j}" for j in range(width)]
    return dict(zip(labels, array.T, strict=True))


def _task_columns(outputs: dict[str, Tensor | list[str]], task: str | None,
                  names: Sequence[str] | None, threshold: float) -> dict[str, list[str]]:
    """``label`` (multiclass) or ``labels`` (multilabel) from the classification output."""
    scores = _scores(outputs, task)
    if scores is None:
        return {}
    width = scores.shape[1]
    names = [str(n) for n in names] if names and len(names) == width else \
        [str(j) for j in range(width)]
    if task == "multiclass":
        return {"label": [names[i] for i in scores.argmax(axis=1)]}
    return {"labels": [";".join(n for n, on in zip(names, row, strict=True) if on)
                       for row in (scores >= threshold)]}


def _scores(outputs: dict[str, Tensor | list[str]], task: str | None) -> np.ndarray | None:
    """The (N, K) classification scores: the plain tensor output, else a dict's scores entry
    (None for other tasks; multiclass needs two classes or more, multilabel one label)."""
    if task not in CLASSIFICATION:
        return None
    least = 2 if task == "multiclass" else 1
    for key in ("", *SCORE_KEYS):
        value = outputs.get(key)
        if isinstance(value, Tensor) and value.ndim == 2 and value.shape[1] >= least:
            return _numpy(value)
    return None


def _warn_if_not_probabilities(outputs: dict[str, Tensor | list[str]], task: str | None) -> None:
    """``prob_`` columns and ``labels`` assume probabilities; say so once if they are not."""
    scores = _scores(outputs, task)
    if scores is not None and scores.size and not ((scores >= 0) & (scores <= 1)).all():
        what = "label is their largest" if task == "multiclass" else "labels are thresholded"
        rank_zero_warn(
            f"predict: the {task} outputs are not probabilities (values outside [0, 1]): they "
            f"are written as predict_step returned them and {what} as they are; return "
            "probabilities from predict_step (softmax / sigmoid) for probability columns")


# -- where names and the task come from ---------------------------------------------------------
def task_of(trainer: Trainer, pl_module: LightningModule) -> str | None:
    """The module's ``task`` hyperparameter, else the datamodule's ``task``, else None."""
    task = getattr(pl_module, "hparams", {}).get("task") or getattr(trainer.datamodule, "task",
                                                                    None)
    return str(task) if task else None


def output_names(trainer: Trainer, pl_module: LightningModule,
                 task: str | None) -> list[str] | None:
    """The module's names for its outputs (those it was trained against), else the data's."""
    keys = {"regression": ("target_names",), "none": ()}.get(
        str(task), ("class_names",) if task else ("class_names", "target_names"))
    for names in _name_candidates(getattr(pl_module, "hparams", {}), trainer.datamodule, keys):
        if names:
            return [str(n) for n in names]
    return None


def _name_candidates(hparams: Any, datamodule: Any, keys: Sequence[str]) -> Iterator[Any]:
    # A generator, so the datamodule (which may read its table for them) is asked last.
    for key in ("output_names", *keys):
        yield hparams.get(key)
    yield getattr(datamodule, "output_names", None)
    for key in keys:
        yield getattr(datamodule, key, None)


def default_output(ckpt_path: str | Path) -> Path:
    """``<run>/predictions.csv`` for a checkpoint in ``<run>/checkpoints/``, else beside it."""
    folder = Path(ckpt_path).resolve().parent
    if folder.name == "checkpoints":
        folder = folder.parent
    return folder / "predictions.csv"


# -- helpers -----------------------------------------------------------------------------------
def _concat(kept: list[Kept]) -> Kept:
    """Batches' (or ranks') outputs joined per key, in order; a rank without batches has
    none to add."""
    kept = [part for part in kept if part]
    joined: Kept = {}
    for key in (kept[0] if kept else {}):
        values = [part[key] for part in kept]
        if isinstance(values[0], list):
            joined[key] = [name for names in values for name in names]
        else:
            joined[key] = torch.cat(values)  # type: ignore[arg-type]
    return joined


def _numpy(value: Tensor) -> np.ndarray:
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


def _input_stems(dataset: Any, indices: Tensor) -> list[str]:
    paths = getattr(dataset, "paths", None)
    if paths is None or not len(paths):
        return [""] * len(indices)
    return [Path(str(paths[i])).stem for i in indices.tolist()]


def _predict_dataset(trainer: Trainer) -> Any:
    loaders = trainer.predict_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    return getattr(loader, "dataset", None)


def _replace_atomically(path: Path, write: Any) -> None:
    # Two ranks may write the same input's file: each its own partial file, then a rename.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as file:
        write(file)
    os.replace(partial, path)


def _write_atomically(table: pd.DataFrame, path: Path) -> None:
    # A reader (or a killed run) never sees a half-written file.
    partial = path.with_name(f".{path.name}.partial")
    table.to_csv(partial, index=False)
    os.replace(partial, path)
