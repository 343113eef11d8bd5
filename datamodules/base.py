"""What every table-driven datamodule shares: reading and checking the table, the task's
targets, splits, the class list, samplers, loaders and batch-level transforms.

A subclass says how to load its table, what is wrong with a row, and how to build a dataset from
rows; this class does the rest in the same order for every source, so bad input is reported the
same way (before any training step, in the main process) whatever the data.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from datamodules.batch_transforms import apply_to_inputs
from datamodules.resume import ResumableLoader, check_resumable, training_data_settings
from datamodules.samplers import (
    EpochSeededSampler,
    RandomShardSampler,
    SamplerName,
    SequentialShardSampler,
    SubsetRandomShardSampler,
    WeightedShardSampler,
    class_balanced_weights,
)
from datamodules.splits import stratified_split
from datamodules.tasks import Task, sorted_names, task_targets
from datamodules.validation import DataValidationError, Problem
from errors import DataError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def default_num_workers(ranks_per_node: int = 1) -> int:
    """One loader worker per CPU this process may use, shared between the DDP ranks on a node
    (two ranks with two workers each on two cores would only fight over them)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cpus or 1) // max(1, ranks_per_node)))


def silence_more_workers_advice() -> None:
    """No loader workers is a choice (samples ready in memory, or ``num_workers: 0``: workers
    would only add start-up time and copies). On machines with more than two CPUs Lightning
    advises every loader with fewer than two workers to use more: three lines per run telling
    the user to undo it. The filter is process-wide (warnings filters are), so it also covers
    later loaders of the process."""
    warnings.filterwarnings("ignore", message=r"The '\w+' does not have many workers",
                            category=PossibleUserWarning)


def read_table(path: Path, what: str = "annotations file") -> pd.DataFrame:
    """A table by its suffix: Parquet, JSON, TSV, else CSV; an empty file is an empty table."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".json":
        return pd.read_json(path)
    try:
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


class TableDataModule(LightningDataModule):
    """Base of the CSV/image-folder and DataFrame datamodules.

    Args:
        task: what the rows are for, and so what the targets are (each task's code is in
            :mod:`datamodules.tasks`):

            * ``multiclass``: one ``label_column`` of classes (ints or strings) -> int64 index;
            * ``multilabel``: a list of 0/1 ``label_column`` s, or one column of names joined
              by ``label_delimiter`` (``"cat;dog"``) -> float32 multi-hot;
            * ``regression``: one or more numeric ``label_column`` s -> float32 values in the
              table's units, shape (N,) for one column and (N, K) for several;
            * ``segmentation``: a ``mask_column`` of mask image paths (one class index per
              pixel, ``class_names`` giving the classes of 0, 1, ...) -> int64 (H, W) masks;
              geometric transforms move image and mask together;
            * ``none``: no targets, the batch is the inputs alone (autoencoders, embeddings).
        label_column: the target column, or a list of them (multilabel, regression); ignored
            for ``segmentation`` and ``none``.
        label_delimiter: multilabel from one column of names joined by this string.
        mask_column: the column of mask paths (``segmentation``), relative to the image root.
        ignore_index: a mask value that marks unlabelled pixels (e.g. 255): allowed in masks
            besides the classes; the model should ignore it in its loss.
        split_column: optional column with ``train`` / ``val`` / ``test`` per row; without it
            the rows are split with a seeded split, stratified where that means something: by
            class (multiclass), by each row's rarest label (multilabel, so rare labels reach
            every split), by quantile bins of the first target (regression); plain for
            segmentation and none.
        test_fraction / val_fraction: the test share of all rows, then the validation share of
            the rest (only used without ``split_column``).
        split_seed: seed of that split, separate from the training seed so every training seed
            is scored on the same test set.
        folds / fold: k-fold cross-validation (``sweep.py --folds K`` sets them): the rows
            outside the test split are dealt into ``folds`` folds by the same strata (seeded by
            ``split_seed``); fold number ``fold`` validates, the others train. The test split
            is the same as without folds; ``val_fraction`` (or the split column's ``val``
            rows, which join the folds) no longer applies.
        sampler: how training rows are drawn: ``random`` (a new permutation each epoch),
            ``sequential``, ``weighted`` (by ``weight_column``; without one, class-balanced for
            multiclass) or ``subset_random`` (a fixed ``subset_fraction`` of rows, reshuffled
            each epoch). All are DDP-safe: the ranks shard one draw made from (seed, epoch).
        weight_column: per-row sampling weights for ``sampler: weighted``.
        subset_fraction: share of training rows used by ``sampler: subset_random``.
        skip_invalid: drop invalid rows (and log how many) instead of failing.
        batch_size: per device (the global batch is ``batch_size * devices * num_nodes``).
        num_workers: loader processes; ``None`` picks none where the samples are ready in
            memory (cached images after deterministic transforms, feature rows), else one per
            available CPU (split across the ranks on a node).
        train_batch_transforms / eval_batch_transforms: transforms applied to whole batches
            after they reach the device (``on_after_batch_transfer``): with cached uint8 images
            this is where augmentation is cheapest, on the GPU when there is one.
        class_names: the classes (multiclass, segmentation) or labels (multilabel) in the
            model's output order. Normally left out: the training split's labels, sorted (the
            label columns for multilabel). Segmentation needs them: mask value ``i`` is class
            ``class_names[i]``. Given for multiclass, they also accept a label column with as
            many classes as rows. ``train.py predict`` sets them from the checkpoint.

    What the model is sized from is known before Lightning sets the data up (reading and
    checking the table once, on first use): ``task``, ``class_names``, ``num_classes``,
    ``num_outputs``, ``target_names``, ``target_mean``/``target_std`` (regression, from the
    training split), ``num_features`` (tables) and ``in_channels`` (images). ``train.py`` hands
    them to the model's ``__init__`` where it takes them (LightningCLI ``link_arguments``).
    """

    def __init__(
        self,
        task: Task = "multiclass",
        label_column: str | list[str] | None = "label",
        label_delimiter: str | None = None,
        mask_column: str | None = None,
        ignore_index: int | None = None,
        split_column: str | None = None,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        folds: int | None = None,
        fold: int = 0,
        sampler: SamplerName = "random",
        weight_column: str | None = None,
        subset_fraction: float = 1.0,
        skip_invalid: bool = False,
        batch_size: int = 64,
        num_workers: int | None = None,
        train_batch_transforms: v2.Transform | None = None,
        eval_batch_transforms: v2.Transform | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.task = task
        # What the rows are for: reading, checking, encoding and stratifying the targets.
        self.task_targets = task_targets(task, label_column, label_delimiter, mask_column,
                                         class_names)
        self.label_columns = self.task_targets.columns
        self.mask_column = mask_column if task == "segmentation" else None
        self.ignore_index = ignore_index
        self.split_column = split_column
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.folds = folds
        self.fold = fold
        self.sampler = sampler
        self.weight_column = weight_column
        self.subset_fraction = subset_fraction
        self.skip_invalid = skip_invalid
        self.batch_size = batch_size
        self.num_workers = num_workers  # None: decided per loader, once the device count is known
        self.train_batch_transforms = train_batch_transforms
        self.eval_batch_transforms = eval_batch_transforms
        self._class_names = ([str(name) for name in class_names] if class_names
                             else self.task_targets.default_class_names())
        self._names_given = class_names is not None
        self._target_stats: tuple[list[float], list[float]] | None = None
        self._table: pd.DataFrame | None = None
        self._split_rows: dict[str, np.ndarray] = {}
        self.datasets: dict[str, Dataset] = {}
        self.split_tables: dict[str, pd.DataFrame] = {}
        self._train_loader: DataLoader | None = None
        self._train_loader_state: dict[str, Any] | None = None  # from a checkpoint, not yet used
        self._resume_epoch = 0  # the epoch a resumed fit continues in
        self._resume_inside = True  # False: a resume starts that epoch, needs no loader position
        self._resume_settings: dict[str, Any] | None = None

    # -- what the model is sized from --------------------------------------------------------
    @property
    def class_names(self) -> list[str] | None:
        """The classes (labels for multilabel) in the model's output order; None for
        regression and none. Reads the table on first use."""
        if not self.task_targets.has_classes:
            return None
        if self._class_names is None:
            self.table_and_splits()
        return self._class_names

    @property
    def num_classes(self) -> int | None:
        names = self.class_names
        return len(names) if names is not None else None

    @property
    def target_names(self) -> list[str] | None:
        """The regression target columns, in the order of the model's outputs."""
        return list(self.label_columns) if self.task == "regression" else None

    @property
    def num_outputs(self) -> int | None:
        """How many values the model outputs per row (per pixel for segmentation)."""
        if self.task == "regression":
            return len(self.label_columns)
        return self.num_classes

    @property
    def output_names(self) -> list[str] | None:
        """Names of the model's outputs: classes, labels or regression targets."""
        return self.target_names if self.task == "regression" else self.class_names

    @property
    def target_mean(self) -> list[float] | None:
        """Regression: each target's mean over the training split (a model can learn the
        standardised target and answer in the table's units)."""
        return self._regression_stats()[0] if self.task == "regression" else None

    @property
    def target_std(self) -> list[float] | None:
        return self._regression_stats()[1] if self.task == "regression" else None

    def _regression_stats(self) -> tuple[list[float], list[float]]:
        if self._target_stats is None:
            table, split_rows = self.table_and_splits()
            self._target_stats = self.task_targets.stats(table.iloc[split_rows["train"]])
        return self._target_stats

    @property
    def num_features(self) -> int | None:
        """Input features per row for tabular data; None where inputs are images."""
        return None

    @property
    def in_channels(self) -> int | None:
        """Image channels the model gets; None for tables or when unknown."""
        return None

    def table_and_splits(self) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """The checked table and its rows per split, read once."""
        if self._table is None:
            table = self.checked_table()
            split_rows = self.split_rows(table)
            learned = self.task_targets.labels_in_rows
            if self._class_names is None and learned:
                train = table.iloc[split_rows["train"]]
                self._class_names = sorted_names(
                    {name for row in self.task_targets.row_labels(train) for name in row})
            if learned:
                self.check_labels_known(table, split_rows)
            self.check_batches_stack(table, split_rows)
            self._table, self._split_rows = table, split_rows
        return self._table, self._split_rows

    # -- what a subclass provides -------------------------------------------------------------
    @property
    def source(self) -> str:
        """How errors name the data (a file path, or a description)."""
        raise NotImplementedError

    def load_table(self) -> pd.DataFrame:
        raise NotImplementedError

    def required_columns(self) -> list[str]:
        return [*self.label_columns, *(c for c in (self.mask_column, self.split_column,
                                                   self.weight_column) if c)]

    def row_problems(self, table: pd.DataFrame) -> list[Problem]:
        """What is wrong with individual rows (files, features); checked before splitting."""
        return []

    def check_batches_stack(self, table: pd.DataFrame, split_rows: dict[str, np.ndarray]
                            ) -> None:
        """Refuse inputs that would not stack into a batch after the transforms; here, before
        the trainer starts, so a failure leaves no run folder behind."""

    def fit_on_train(self, train: pd.DataFrame) -> None:
        """Learn what must come from the training split only (e.g. feature statistics)."""

    def build_dataset(self, split: str, table: pd.DataFrame, targets: np.ndarray | None
                      ) -> Dataset:
        """A split's dataset: items ``(inputs, target)``, or the inputs alone when ``targets``
        is None and the task has no masks (task ``none``)."""
        raise NotImplementedError

    def build_predict_dataset(self) -> Dataset:
        """The inputs to predict, items being the inputs alone (Lightning's default
        ``predict_step`` calls ``forward`` on the batch); prediction writers get each batch's
        dataset indices from Lightning, whatever rank or order it was computed in."""
        raise DataError(f"{type(self).__name__} has no predict data")

    # -- the shared story ---------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Check the data before the trainer writes anything: Lightning creates the logger's
        run folder between this hook and ``setup``, so bad data found here leaves none. Runs on
        one process per node; the other ranks check in ``setup`` (the result is cached)."""
        if self.trainer is not None and self.trainer.state.fn == "predict":
            self.setup("predict")
        else:
            self.table_and_splits()

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            # Prediction needs neither the training table nor its splits: train.py passes the
            # checkpoint's class names as class_names.
            if "predict" not in self.datasets:
                self.datasets["predict"] = self.build_predict_dataset()
            return
        if all(split in self.datasets for split in SPLITS):
            return
        table, split_rows = self.table_and_splits()
        train = table.iloc[split_rows["train"]]
        self.fit_on_train(train)
        for split in SPLITS:
            rows = table.iloc[split_rows[split]]
            self.split_tables[split] = rows
            self.datasets[split] = self.build_dataset(split, rows, self.targets(rows))

    def targets(self, rows: pd.DataFrame) -> np.ndarray | None:
        """The rows' targets in the task's form (None for segmentation, whose targets are the
        mask files, and for none)."""
        return self.task_targets.encode(rows, self.class_names)

    def checked_table(self) -> pd.DataFrame:
        table = self.load_table()
        if table.empty:
            raise DataValidationError(self.source, [], hint="the table has no rows")
        missing = [c for c in self.required_columns() if c not in table.columns]
        if missing:
            raise DataError(f"{self.source}: missing column(s) {missing}; "
                             f"found {list(table.columns)}")
        table = table.reset_index(drop=True)
        problems = self.task_targets.problems(table)
        problems += self.row_problems(table) + self.repeat_problems(table)
        table = self.drop_or_raise(table, sorted(problems, key=lambda p: p.row))
        table = self.without_repeats(table)
        self.task_targets.check_table(self.source, table, self._names_given)
        return table

    # -- the same input listed twice ------------------------------------------------------------
    @property
    def input_column(self) -> str | None:
        """The column naming each row's input (an image path), where a repeat means the same
        input twice; None where rows are the inputs themselves (a table's features)."""
        return None

    def repeats(self, table: pd.DataFrame) -> list[tuple[int, int]]:
        """(row, the earlier row it repeats) for each row whose input an earlier row lists."""
        if self.input_column is None:
            return []
        first: dict[str, int] = {}
        pairs = []
        for row, key in enumerate(table[self.input_column].astype(str)):
            if key in first:
                pairs.append((row, first[key]))
            else:
                first[key] = row
        return pairs

    def repeat_problems(self, table: pd.DataFrame) -> list[Problem]:
        """A repeated input with another target, or in another split of ``split_column``: the
        same image would be learned two ways, or tested on after training on it."""
        targets = [c for c in (*self.label_columns, self.mask_column) if c]
        problems = []
        for row, earlier in self.repeats(table):
            mine, theirs = table.iloc[row], table.iloc[earlier]
            key = mine[self.input_column]
            if [str(mine[c]) for c in targets] != [str(theirs[c]) for c in targets]:
                # Both rows: which of the two targets is right is not ours to guess.
                problems += [Problem(r, f"{key!r} is listed in rows {earlier} and {row} with "
                                        "different targets") for r in (earlier, row)]
            elif self.split_column and str(mine[self.split_column]) != str(
                    theirs[self.split_column]):
                problems.append(Problem(row, f"{key!r} is also row {earlier}, in split "
                                             f"{theirs[self.split_column]!r}"))
        return problems

    def without_repeats(self, table: pd.DataFrame) -> pd.DataFrame:
        """Rows repeating an earlier row's input and target: kept once, said in one line (a
        random split could put the copies in train and test)."""
        rows = [row for row, _ in self.repeats(table)]
        if not rows:
            return table
        row, earlier = self.repeats(table)[0]
        log.warning("%s: %d rows repeat an earlier row's %s and target (first: row %d repeats "
                    "row %d, %r); each is kept once", self.source, len(rows), self.input_column,
                    row, earlier, table.iloc[row][self.input_column])
        return table.drop(index=rows).reset_index(drop=True)

    def drop_or_raise(self, table: pd.DataFrame, problems: list[Problem]) -> pd.DataFrame:
        if not problems:
            return table
        if not self.skip_invalid:
            raise DataValidationError(self.source, problems,
                                      hint="fix them or set skip_invalid: true to drop them")
        bad_rows = sorted({p.row for p in problems})
        log.warning("%s: skip_invalid dropped %d of %d rows (first: %s)", self.source,
                    len(bad_rows), len(table), problems[0].message)
        kept = table.drop(index=bad_rows).reset_index(drop=True)
        if kept.empty:
            raise DataValidationError(self.source, problems, hint="every row is invalid")
        return kept

    def split_rows(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        """Row positions per split: from the split column, or a stratified seeded split; with
        ``folds``, validation is fold ``fold`` of the rows outside the test split."""
        fixed = self.fixed_split_rows(table)
        if self.folds is None:
            return fixed
        from datamodules.folds import fold_split  # only a cross-validation run reads it

        return fold_split(self, table, fixed)

    def fixed_split_rows(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        """The train/val/test split without folds."""
        if self.split_column:
            column = table[self.split_column].astype(str).str.strip().str.lower()
            unknown = sorted(set(column) - set(SPLITS))
            if unknown:
                raise DataError(f"{self.source}: column {self.split_column!r} has values "
                                 f"{unknown}; expected train, val or test")
            return {s: np.flatnonzero(column == s) for s in SPLITS}
        labels = self.strata(table)
        rest, test = stratified_split(labels, self.test_fraction, self.split_seed)
        train, val = stratified_split(labels[rest], self.val_fraction, self.split_seed + 1)
        return {"train": rest[train], "val": rest[val], "test": test}

    def strata(self, table: pd.DataFrame) -> np.ndarray:
        """The group each row is stratified by in splits and folds (see ``split_column``)."""
        return self.task_targets.strata(table)

    def check_labels_known(self, table: pd.DataFrame, split_rows: dict[str, np.ndarray]) -> None:
        """Every label must be one of the model's classes (validation/test labels: classes the
        model was trained on)."""
        known = set(self._class_names or [])
        problems = []
        for split in SPLITS:
            rows = table.iloc[split_rows[split]]
            for row, names in zip(split_rows[split], self.task_targets.row_labels(rows),
                                  strict=True):
                for key in names:
                    if key not in known:
                        what = "in class_names" if self._names_given else "a training class"
                        problems.append(Problem(int(row), f"{split} label {key!r} is not "
                                                          f"{what} {self._class_names}"))
        if problems:
            raise DataValidationError(self.source, sorted(problems, key=lambda p: p.row))

    # -- loaders -----------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        """A loader that records its position (torchdata's ``StatefulDataLoader``, with the
        resumable sampler): a checkpoint taken inside an epoch continues with the next batch
        the interrupted run would have trained on, also with loader workers."""
        sampler = self.train_sampler()
        sampler.set_epoch(self._resume_epoch)  # before the state: see EpochSeededSampler
        loader = self._loader("train", sampler=sampler,
                              drop_last=self.last_batch_of_one_under_batchnorm(len(sampler)))
        if isinstance(loader, ResumableLoader):
            loader.accept_loaded_state = self._resume_inside
        if self._train_loader_state is not None and isinstance(loader, StatefulDataLoader):
            loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        self._train_loader = loader
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        # No sampler: Lightning shards it across ranks with an unrepeated distributed sampler.
        return self._loader("predict")

    def train_sampler(self) -> EpochSeededSampler:
        trainer = self.trainer
        shard = {"num_replicas": trainer.world_size if trainer else 1,
                 "rank": trainer.global_rank if trainer else 0,
                 # PL_GLOBAL_SEED is set by seed_everything and equal on every rank.
                 "seed": int(os.environ.get("PL_GLOBAL_SEED", 0))}
        size = len(self.datasets["train"])
        if self.sampler == "sequential":
            return SequentialShardSampler(size, **shard)
        if self.sampler == "random":
            return RandomShardSampler(size, **shard)
        if self.sampler == "weighted":
            train = self.split_tables["train"]
            if self.weight_column:
                weights = torch.as_tensor(pd.to_numeric(train[self.weight_column]).to_numpy())
            elif self.task == "multiclass":
                weights = class_balanced_weights(self.datasets["train"].targets)
            else:
                raise DataError(f"sampler: weighted needs weight_column under task: {self.task} "
                                "(class-balanced weights exist for multiclass only)")
            return WeightedShardSampler(weights, **shard)
        if self.sampler == "subset_random":
            if not 0 < self.subset_fraction <= 1:
                raise DataError(f"subset_fraction must be in (0, 1], got {self.subset_fraction}")
            chosen = torch.randperm(size, generator=torch.Generator().manual_seed(shard["seed"]))
            return SubsetRandomShardSampler(chosen[: max(1, round(self.subset_fraction * size))],
                                            **shard)
        raise ValueError(f"unknown sampler {self.sampler!r}")

    def last_batch_of_one_under_batchnorm(self, samples: int) -> bool:
        """True, said in one line, where this rank's last training batch would hold a single
        sample and the model has BatchNorm1d: in training mode it cannot normalise one value
        per channel and would stop the run at that batch, every epoch. That batch is dropped
        (``drop_last``, only then)."""
        model = self.trainer.lightning_module if self.trainer else None
        if model is None or samples <= 1 or samples % self.batch_size != 1:
            return False
        # BatchNorm1d: on (N, C) features one sample is one value per channel. The 2d/3d
        # norms see H x W values per sample and train on a batch of one.
        if not any(isinstance(module, nn.BatchNorm1d) for module in model.modules()):
            return False
        rank_zero_info(f"{type(self).__name__}: the last training batch would hold 1 of "
                       f"{samples} samples, which {type(model).__name__}'s BatchNorm cannot "
                       "train on: it is left out each epoch (drop_last); a batch_size that "
                       f"does not leave 1 over keeps it")
        return True

    def loader_workers(self, split: str = "train") -> int:
        """``num_workers``; with ``None``, none for a split whose dataset says its samples are
        ``ready_in_memory`` (a worker would only copy them to the main process: on 5,000 cached
        28x28 images that is 0.30 -> 0.12 s an epoch, benchmarks/user_folder.py), else one
        per CPU shared by this node's ranks."""
        if self.num_workers is not None:
            return self.num_workers
        if getattr(self.datasets.get(split), "ready_in_memory", False):
            return 0
        return default_num_workers(self.trainer.num_devices if self.trainer else 1)

    def _loader(self, split: str, sampler: EpochSeededSampler | None = None,
                drop_last: bool = False) -> DataLoader:
        """The training loader is a ``ResumableLoader`` (it saves its position); the others
        are plain ``DataLoader``s, which evaluation restarts from the start anyway."""
        workers = self.loader_workers(split)
        if workers == 0:
            silence_more_workers_advice()
        if split == "train" and self.num_workers is None and workers == 0:
            rank_zero_info(f"{self.source}: num_workers: null: no loader workers, the samples "
                           "are ready in memory (set num_workers to use some)")
        # Each new loader iterator draws a base seed for its workers. From its own generator, not
        # torch's global one: otherwise every epoch (with num_workers=0 or non-persistent
        # workers: a new iterator per epoch; persistent ones: only the first) would move the
        # global stream, and dropout would depend on the worker setting and on resuming.
        generator = torch.Generator().manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)))
        loader_class = ResumableLoader if split == "train" else DataLoader
        return loader_class(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            pin_memory=torch.cuda.is_available(),
            generator=generator,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        training = self.trainer is not None and self.trainer.training
        transform = self.train_batch_transforms if training else self.eval_batch_transforms
        if transform is None:
            return batch
        if isinstance(batch, Tensor):  # predict batches (and task none) are the inputs alone
            return transform(batch)
        if self.task == "segmentation" and isinstance(batch, (tuple, list)) and len(batch) == 2:
            # Geometric batch transforms must move the masks with the images.
            images, masks = transform(batch[0], tv_tensors.Mask(batch[1]))
            return images, masks.as_subclass(Tensor)
        return apply_to_inputs(transform, batch) if isinstance(batch, (tuple, list)) else batch

    # -- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # Prediction needs the class order the model was trained on; a resume needs the
        # training loader's position, the epoch it continues in, and the settings the
        # sequence of batches depends on (datamodules.resume).
        state: dict[str, Any] = {"class_names": list(self._class_names or [])}
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"
        if fitting and isinstance(self._train_loader, StatefulDataLoader):
            state["training_data"] = self.resume_settings()
            state["train_loader"] = self._train_loader.state_dict()
            state["inside_epoch"], state["resume_epoch"] = self.resume_point()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("class_names")
        if saved and self._class_names and saved != self._class_names:
            raise DataError(f"{self.source}: the checkpoint's classes {saved} differ from the "
                             f"data's {self._class_names}")
        self._class_names = list(saved or self._class_names or []) or None
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"
        if fitting and "train_loader" in state_dict:
            check_resumable(state_dict["training_data"], self.resume_settings(),
                            mid_epoch=state_dict["inside_epoch"])
            self._resume_inside = state_dict["inside_epoch"]
            self._train_loader_state = state_dict["train_loader"] if self._resume_inside else None
            self._resume_epoch = state_dict["resume_epoch"]

    def resume_point(self) -> tuple[bool, int]:
        """Whether a checkpoint taken now is inside an epoch, and the epoch a run resumed from
        it continues in. Lightning counts an epoch as processed just before
        ``on_train_epoch_end`` (after its last batch and validation); after the last epoch
        that count is the final one."""
        trainer = self.trainer
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return True, trainer.current_epoch
        epochs = trainer.fit_loop.epoch_progress.current  # (FitLoop.done would change them)
        if trainer.max_epochs not in (None, -1) and epochs.processed >= trainer.max_epochs:
            return False, epochs.processed
        return False, epochs.completed + 1

    def resume_settings(self) -> dict[str, Any]:
        """The settings this run's sequence of training batches depends on
        (:func:`datamodules.resume.training_data_settings`), worked out once per run: it
        hashes the training split."""
        if self._resume_settings is None:
            options = {"weighted": {"weight_column": self.weight_column},
                       "subset_random": {"subset_fraction": self.subset_fraction}
                       }.get(self.sampler, {})
            self._resume_settings = training_data_settings(
                self.source, self.split_tables["train"], self.sampler, options,
                seed=int(os.environ.get("PL_GLOBAL_SEED", 0)), batch_size=self.batch_size,
                processes=self.trainer.world_size if self.trainer else 1,
                num_workers=self.loader_workers())
        return self._resume_settings


def targets_tensor(targets: np.ndarray | None) -> Tensor | None:
    """Targets as a tensor of their own dtype (int64 classes, float32 values or multi-hot), or
    None where the items are the inputs alone (prediction, task none)."""
    return None if targets is None else torch.as_tensor(targets)
