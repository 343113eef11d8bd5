"""What every table-driven classification datamodule shares: reading and checking the table,
splits, the class list, samplers, loaders and batch-level transforms.

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
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
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
from datamodules.splits import stratified_folds, stratified_split
from datamodules.stacked_batch import collate_stacked
from datamodules.validation import DataError, DataValidationError, Problem

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def default_num_workers(ranks_per_node: int = 1) -> int:
    """One loader worker per CPU this process may use, shared between the DDP ranks on a node
    (two ranks with two workers each on two cores would only fight over them)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cpus or 1) // max(1, ranks_per_node)))


def silence_more_workers_advice() -> None:
    """An explicit ``num_workers: 0`` is a choice (the digits config keeps decoded images in
    memory and transforms whole batches on the device; workers would only add start-up time and
    copies). On machines with more than two CPUs Lightning advises every loader with fewer than
    two workers to use more: three lines per run telling the user to undo it. The filter is
    process-wide (warnings filters are), so it also covers later loaders of the process."""
    warnings.filterwarnings("ignore", message=r"The '\w+' does not have many workers",
                            category=PossibleUserWarning)


def label_key(value: object) -> str:
    """Labels compare as strings so 3, "3" and 3.0 read from different files agree."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def class_names_from(labels: pd.Series) -> list[str]:
    """Sorted class names; integer-like labels sort numerically (2 before 10)."""
    keys = sorted({label_key(v) for v in labels})
    if all(k.lstrip("-").isdigit() for k in keys):
        keys.sort(key=int)
    return keys


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


class ClassificationDataModule(LightningDataModule):
    """Base of the CSV/image-folder and DataFrame datamodules.

    Args:
        label_column: column with the class of each row (ints or strings).
        split_column: optional column with ``train`` / ``val`` / ``test`` per row; without it
            the rows are split with a seeded stratified split.
        test_fraction / val_fraction: the test share of all rows, then the validation share of
            the rest (only used without ``split_column``).
        split_seed: seed of that split, separate from the training seed so every training seed
            is scored on the same test set.
        folds / fold: k-fold cross-validation (``sweep.py --folds K`` sets them): the rows
            outside the test split are dealt into ``folds`` stratified folds (seeded by
            ``split_seed``); fold number ``fold`` validates, the others train. The test split
            is the same as without folds; ``val_fraction`` (or the split column's ``val``
            rows, which join the folds) no longer applies.
        sampler: how training rows are drawn: ``random`` (a new permutation each epoch),
            ``sequential``, ``weighted`` (class-balanced, or by ``weight_column``) or
            ``subset_random`` (a fixed ``subset_fraction`` of rows, reshuffled each epoch). All
            are DDP-safe: the ranks shard one draw made from (seed, epoch).
        weight_column: per-row sampling weights for ``sampler: weighted``.
        subset_fraction: share of training rows used by ``sampler: subset_random``.
        skip_invalid: drop invalid rows (and log how many) instead of failing.
        batch_size: per device (the global batch is ``batch_size * devices * num_nodes``).
        num_workers: loader processes; ``None`` picks one per available CPU (split across
            the ranks on a node).
        train_batch_transforms / eval_batch_transforms: transforms applied to whole batches
            after they reach the device (``on_after_batch_transfer``): with cached uint8 images
            this is where augmentation is cheapest, on the GPU when there is one.
        class_names: the classes in the model's output order. Normally left out: the training
            split's labels, sorted. ``train.py predict`` sets it from the checkpoint, so
            predicting needs no training table.

    ``class_names``, ``num_classes`` and ``num_features`` are known before Lightning sets the
    data up (reading and checking the table once, on first use): ``train.py`` hands them to
    the model's ``__init__`` (LightningCLI ``link_arguments``), so configs never repeat them.
    """

    def __init__(
        self,
        label_column: str = "label",
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
        self.label_column = label_column
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
        self._class_names = [str(name) for name in class_names] if class_names else None
        self._names_given = self._class_names is not None
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
    def class_names(self) -> list[str]:
        """The classes in the model's output order (reads the table on first use)."""
        if self._class_names is None:
            self.table_and_splits()
        assert self._class_names is not None
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_features(self) -> int | None:
        """Input features per row for tabular data; None where inputs are images."""
        return None

    def table_and_splits(self) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """The checked table and its rows per split, read once."""
        if self._table is None:
            table = self.checked_table()
            split_rows = self.split_rows(table)
            if self._class_names is None:
                self._class_names = class_names_from(
                    table.iloc[split_rows["train"]][self.label_column])
            index = {name: i for i, name in enumerate(self._class_names)}
            self.check_labels_known(table, split_rows, index)
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
        return [self.label_column] + [c for c in (self.split_column, self.weight_column) if c]

    def row_problems(self, table: pd.DataFrame) -> list[Problem]:
        """What is wrong with individual rows (files, features); checked before splitting."""
        return []

    def fit_on_train(self, train: pd.DataFrame) -> None:
        """Learn what must come from the training split only (e.g. feature statistics)."""

    def build_dataset(self, split: str, table: pd.DataFrame, targets: np.ndarray) -> Dataset:
        raise NotImplementedError

    def build_predict_dataset(self) -> Dataset:
        """The inputs to predict, items being the inputs alone (Lightning's default
        ``predict_step`` calls ``forward`` on the batch); prediction writers get each batch's
        dataset indices from Lightning, whatever rank or order it was computed in."""
        raise DataError(f"{type(self).__name__} has no predict data")

    # -- the shared story ---------------------------------------------------------------------
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
        index = {name: i for i, name in enumerate(self.class_names)}
        train = table.iloc[split_rows["train"]]
        self.fit_on_train(train)
        for split in SPLITS:
            rows = table.iloc[split_rows[split]]
            targets = np.array([index[label_key(v)] for v in rows[self.label_column]],
                               dtype=np.int64)
            self.split_tables[split] = rows
            self.datasets[split] = self.build_dataset(split, rows, targets)

    def checked_table(self) -> pd.DataFrame:
        table = self.load_table()
        if table.empty:
            raise DataValidationError(self.source, [], hint="the table has no rows")
        missing = [c for c in self.required_columns() if c not in table.columns]
        if missing:
            raise DataError(f"{self.source}: missing column(s) {missing}; "
                             f"found {list(table.columns)}")
        table = table.reset_index(drop=True)
        problems = [Problem(int(r), f"no label in column {self.label_column!r}")
                    for r in np.flatnonzero(table[self.label_column].isna().to_numpy())]
        problems += self.row_problems(table)
        return self.drop_or_raise(table, problems)

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
        rest, folds = self.fold_assignment(table, fixed)
        return {"train": rest[folds != self.fold], "val": rest[folds == self.fold],
                "test": fixed["test"]}

    def fixed_split_rows(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        """The train/val/test split without folds."""
        if self.split_column:
            column = table[self.split_column].astype(str).str.strip().str.lower()
            unknown = sorted(set(column) - set(SPLITS))
            if unknown:
                raise DataError(f"{self.source}: column {self.split_column!r} has values "
                                 f"{unknown}; expected train, val or test")
            return {s: np.flatnonzero(column == s) for s in SPLITS}
        labels = table[self.label_column].map(label_key).to_numpy()
        rest, test = stratified_split(labels, self.test_fraction, self.split_seed)
        train, val = stratified_split(labels[rest], self.val_fraction, self.split_seed + 1)
        return {"train": rest[train], "val": rest[val], "test": test}

    def fold_assignment(self, table: pd.DataFrame, fixed: dict[str, np.ndarray] | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
        """The rows outside the test split (of ``fixed``, the split without folds), and the
        fold of each (from ``split_seed``)."""
        assert self.folds is not None
        if not 0 <= self.fold < self.folds:
            raise DataError(f"fold {self.fold} does not exist: folds are 0 to {self.folds - 1}")
        fixed = fixed if fixed is not None else self.fixed_split_rows(table)
        rest = np.sort(np.concatenate([fixed["train"], fixed["val"]]))
        labels = table[self.label_column].map(label_key).to_numpy()[rest]
        try:
            return rest, stratified_folds(labels, self.folds, self.split_seed + 1)
        except ValueError as error:
            raise DataError(f"{self.source}: {error} outside the test split") from None

    def fold_table(self) -> pd.DataFrame:
        """Where each row goes in cross-validation (``row`` in the checked table, its label,
        ``part``: ``test`` or the number of the fold it validates in); sweep.py saves it."""
        table, _ = self.table_and_splits()
        rest, folds = self.fold_assignment(table)
        part = np.full(len(table), "test", dtype=object)
        part[rest] = [str(f) for f in folds]
        return pd.DataFrame({"row": np.arange(len(table)),
                             "label": table[self.label_column].map(label_key), "part": part})

    def check_labels_known(
        self, table: pd.DataFrame, split_rows: dict[str, np.ndarray], index: dict[str, int]
    ) -> None:
        """Every label must be one of the model's classes (validation/test labels: classes the
        model was trained on)."""
        problems = []
        for split in SPLITS:
            for row in split_rows[split]:
                key = label_key(table[self.label_column].iloc[row])
                if key not in index:
                    what = "in class_names" if self._names_given else "a training class"
                    problems.append(Problem(int(row), f"{split} label {key!r} is not "
                                                      f"{what} {self.class_names}"))
        if problems:
            raise DataValidationError(self.source, sorted(problems, key=lambda p: p.row))

    # -- loaders -----------------------------------------------------------------------------
    # The training loader's class: a StatefulDataLoader records its position for an exact
    # resume inside an epoch; a plain DataLoader here resumes exactly only at epoch ends.
    train_loader_class: type[DataLoader] = ResumableLoader

    def train_dataloader(self) -> DataLoader:
        """A loader that records its position (torchdata's ``StatefulDataLoader``, with the
        resumable sampler): a checkpoint taken inside an epoch continues with the next batch
        the interrupted run would have trained on, also with loader workers."""
        sampler = self.train_sampler()
        sampler.set_epoch(self._resume_epoch)  # before the state: see EpochSeededSampler
        loader = self._loader("train", sampler=sampler)
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
            else:
                weights = class_balanced_weights(self.datasets["train"].targets)
            return WeightedShardSampler(weights, **shard)
        if self.sampler == "subset_random":
            if not 0 < self.subset_fraction <= 1:
                raise DataError(f"subset_fraction must be in (0, 1], got {self.subset_fraction}")
            chosen = torch.randperm(size, generator=torch.Generator().manual_seed(shard["seed"]))
            return SubsetRandomShardSampler(chosen[: max(1, round(self.subset_fraction * size))],
                                            **shard)
        raise ValueError(f"unknown sampler {self.sampler!r}")

    def loader_workers(self) -> int:
        """``num_workers``, or with ``None`` one per CPU shared by this node's ranks."""
        if self.num_workers is None:
            return default_num_workers(self.trainer.num_devices if self.trainer else 1)
        return self.num_workers

    def _loader(self, split: str, sampler: EpochSeededSampler | None = None) -> DataLoader:
        """The training loader is ``train_loader_class`` (it saves its position); the others
        are plain ``DataLoader``s, which evaluation restarts from the start anyway."""
        workers = self.loader_workers()
        if self.num_workers == 0:
            silence_more_workers_advice()
        # Each new loader iterator draws a base seed for its workers. From its own generator, not
        # torch's global one: otherwise every epoch (with num_workers=0 or non-persistent
        # workers: a new iterator per epoch; persistent ones: only the first) would move the
        # global stream, and dropout would depend on the worker setting and on resuming.
        generator = torch.Generator().manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)))
        loader_class = self.train_loader_class if split == "train" else DataLoader
        return loader_class(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            pin_memory=torch.cuda.is_available(),
            generator=generator,
            collate_fn=collate_stacked,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        training = self.trainer is not None and self.trainer.training
        transform = self.train_batch_transforms if training else self.eval_batch_transforms
        if transform is None:
            return batch
        if isinstance(batch, Tensor):  # predict batches are the inputs alone
            return transform(batch)
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


def targets_tensor(targets: np.ndarray | None, length: int) -> Tensor:
    """Targets as int64, or -1 for unlabelled rows (prediction)."""
    if targets is None:
        return torch.full((length,), -1, dtype=torch.long)
    return torch.as_tensor(targets, dtype=torch.long)
