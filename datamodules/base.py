"""What every table-driven datamodule shares: reading and checking the table (before any
training step, in the main process), the task's targets, splits, the class list, samplers,
loaders, batch-level transforms and the checkpoint state."""

import os
import warnings
from collections.abc import Iterator
from functools import cached_property
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
from torchvision import transforms as transforms_v1
from torchvision.transforms import v2

from datamodules.samplers import EpochSeededSampler, RandomShardSampler, SamplerName
from datamodules.splits import stratified_split
from datamodules.tasks import Task, sorted_names, task_targets
from datamodules.validation import DataValidationError, Problem
from errors import DataError

SPLITS = ("train", "val", "test")


def default_num_workers(ranks_per_node: int = 1) -> int:
    """One loader worker per CPU this process may use, shared between the DDP ranks on a node."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cpus or 1) // max(1, ranks_per_node)))


def global_seed() -> int:
    """The run's seed: set by ``seed_everything``, equal on every rank."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def read_table(path: Path, what: str = "annotations file") -> pd.DataFrame:
    """A table by its suffix: Parquet, JSON, TSV, else CSV; an empty file is an empty table."""
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder: give a table (CSV, TSV, Parquet or JSON) "
                        "with a column of the image paths")
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


class ResumableLoader(StatefulDataLoader):
    """torchdata's ``StatefulDataLoader`` (it records the position of the last batch handed to
    training, not of those its workers prefetched), with a switch to ignore a loaded state: a
    run resumed from an epoch-end checkpoint starts a new epoch, yet Lightning restores the
    finished epoch's state, which may come from another number of workers or processes."""

    accept_loaded_state = True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.accept_loaded_state:
            super().load_state_dict(state_dict)


class TableDataModule(LightningDataModule):
    """Base of the CSV/image-folder and DataFrame datamodules.

    Args:
        task: ``multiclass`` (a column of classes), ``multilabel`` (0/1 columns or delimited
            names), ``regression`` (numeric columns), ``segmentation`` (masks) or ``none``.
        label_column: the target column, or a list of them (multilabel, regression).
        label_delimiter: multilabel from one column of names joined by this string.
        mask_column: the column of mask paths (``segmentation``), relative to the image root.
        ignore_index: a mask value that marks unlabelled pixels (e.g. 255).
        split_column: a column of ``train`` / ``val`` / ``test``; else a seeded split,
            stratified by class, rarest label or target quantile.
        test_fraction: the test share of all rows (without ``split_column``).
        val_fraction: the validation share of the rest (without ``split_column``).
        split_seed: the split's seed, apart from the training seed (the same test set for all).
        folds: k-fold cross-validation of the rows outside the test split, set by
            ``sweep.py --folds K``; ``val_fraction`` then no longer applies.
        fold: the fold that validates; the others train.
        sampler: ``random``, ``sequential``, ``weighted`` (by ``weight_column``, else
            class-balanced for multiclass) or ``subset_random``; all DDP-safe.
        weight_column: per-row sampling weights for ``sampler: weighted``.
        subset_fraction: share of training rows used by ``sampler: subset_random``.
        skip_invalid: drop invalid rows (and log how many) instead of failing.
        batch_size: per device (the global batch is ``batch_size * devices * num_nodes``).
        num_workers: loader processes; ``None``: none where the samples are ready in memory,
            else one per CPU (shared by the ranks on a node).
        train_batch_transforms: transforms of whole training batches on the device.
        eval_batch_transforms: the same for validation, test and predict batches.
        class_names: the classes (labels) in output order; default: the training split's,
            sorted. Segmentation needs them: mask value ``i`` is ``class_names[i]``. Given,
            they also accept a label column with nearly one class per row.

    What the model is sized from (``class_names``, ``num_classes``, ``num_outputs``, ...) is
    known before Lightning sets the data up; ``train.py`` links it to the model's arguments.
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
        self.num_workers = num_workers
        self.train_batch_transforms = train_batch_transforms
        self.eval_batch_transforms = eval_batch_transforms
        if sampler == "weighted" and not weight_column and task != "multiclass":
            raise DataError(f"sampler: weighted needs weight_column under task: {task} "
                            "(class-balanced weights exist for multiclass only)")
        if not 0 < subset_fraction <= 1:
            raise DataError(f"subset_fraction must be in (0, 1], got {subset_fraction}")
        self._class_names = ([str(name) for name in class_names] if class_names
                             else self.task_targets.default_class_names())
        self._names_given = class_names is not None
        self._table: pd.DataFrame | None = None
        self._split_rows: dict[str, np.ndarray] = {}
        self.datasets: dict[str, Dataset] = {}
        self.split_tables: dict[str, pd.DataFrame] = {}
        # Exact resume (datamodules.resume): the loader, the loader state a checkpoint brought,
        # the epoch the resumed fit continues in, and whether it continues inside that epoch.
        self._train_loader: DataLoader | None = None
        self._train_loader_state: dict[str, Any] | None = None
        self._resume_epoch = 0
        self._resume_inside = True
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
        return len(self.label_columns) if self.task == "regression" else self.num_classes

    @property
    def target_mean(self) -> list[float] | None:
        """Regression: each target's mean over the training split (a model can learn the
        standardised target and answer in the table's units)."""
        return self._regression_stats[0] if self.task == "regression" else None

    @property
    def target_std(self) -> list[float] | None:
        return self._regression_stats[1] if self.task == "regression" else None

    @cached_property
    def _regression_stats(self) -> tuple[list[float], list[float]]:
        table, split_rows = self.table_and_splits()
        return self.task_targets.stats(table.iloc[split_rows["train"]])

    @property
    def num_features(self) -> int | None:
        """Input features per row for tabular data (subclasses say); None for images."""
        return None

    @property
    def in_channels(self) -> int | None:
        """Image channels the model gets (subclasses say); None for tables or when unknown."""
        return None

    def table_and_splits(self) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """The checked table and its rows per split, read once."""
        if self._table is None:
            table = self.checked_table()
            split_rows = self.fixed_split_rows(table)
            if self.folds is not None:  # validation: fold ``fold`` of the rows outside test
                from datamodules.folds import fold_split

                split_rows = fold_split(self, table, split_rows)
            if not len(split_rows["train"]):
                where = (f"column {self.split_column!r} has no 'train' row" if self.split_column
                         else f"the split of {len(table)} rows left none")
                raise DataError(f"{self.source}: no training rows: {where}")
            if self.weight_column and not (pd.to_numeric(table[self.weight_column]).iloc[
                    split_rows["train"]] > 0).any():
                raise DataError(f"{self.source}: every training row has weight 0 in column "
                                f"{self.weight_column!r}: the weighted sampler can draw none")
            if self.task_targets.labels_in_rows:
                if self._class_names is None:
                    train = self.task_targets.row_labels(table.iloc[split_rows["train"]])
                    self._class_names = sorted_names({name for row in train for name in row})
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

    @property
    def input_column(self) -> str | None:
        """The column naming each row's input (an image path), where a repeat means the same
        input twice; None where rows are the inputs themselves (a table's features)."""
        return None

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
        """The inputs to predict, items being the inputs alone."""
        raise DataError(f"{type(self).__name__} has no predict data")

    # -- the shared story ---------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Check the data here, before Lightning creates the logger's run folder (between this
        hook and ``setup``): bad data leaves none. The other ranks check in ``setup``."""
        if self.trainer is not None and self.trainer.state.fn == "predict":
            self.setup("predict")
        else:
            self.table_and_splits()

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":  # needs no training table: train.py passes the class names
            if "predict" not in self.datasets:
                self.datasets["predict"] = self.build_predict_dataset()
            return
        if all(split in self.datasets for split in SPLITS):
            return
        table, split_rows = self.table_and_splits()
        self.fit_on_train(table.iloc[split_rows["train"]])
        for split in SPLITS:
            rows = table.iloc[split_rows[split]]
            self.split_tables[split] = rows
            targets = self.task_targets.encode(rows, self.class_names)
            self.datasets[split] = self.build_dataset(split, rows, targets)

    def checked_table(self) -> pd.DataFrame:
        table = self.load_table()
        if table.empty:
            raise DataValidationError(self.source, [], hint="the table has no rows")
        missing = [c for c in self.required_columns() if c not in table.columns]
        if missing:
            raise DataError(f"{self.source}: missing column(s) {missing}; found "
                            f"{list(table.columns)} (the *_column options name the columns)")
        table = table.reset_index(drop=True)
        # The table's own problems first: checking the files can take minutes.
        problems = self.task_targets.problems(table)
        if self.weight_column:
            from datamodules.optional_samplers import weight_problems

            problems += weight_problems(table, self.weight_column)
        if problems and not self.skip_invalid:
            raise DataValidationError(self.source, sorted(problems, key=lambda p: p.row))
        readable = table.drop(index=[p.row for p in problems])
        self.task_targets.check_table(self.source, readable, self._names_given)
        problems += self.row_problems(table)
        repeated = (self.input_column is not None
                    and table[self.input_column].astype(str).duplicated().any())
        if problems or repeated:
            from datamodules.bad_rows import without_bad_rows

            table = without_bad_rows(self, table, problems)
        return table

    def fixed_split_rows(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        """Row positions per split (without folds): from the split column, or a stratified
        seeded split."""
        if self.split_column:
            column = table[self.split_column].astype(str).str.strip().str.lower()
            unknown = sorted(set(column) - set(SPLITS))
            if unknown:
                raise DataError(f"{self.source}: column {self.split_column!r} has values "
                                 f"{unknown}; expected train, val or test")
            return {s: np.flatnonzero(column == s) for s in SPLITS}
        if "split" in table.columns:
            rank_zero_info(f"{self.source}: column 'split' is not used (split_column: null), the "
                           "split is seeded; set split_column: split to use it")
        labels = self.task_targets.strata(table)
        rest, test = stratified_split(labels, self.test_fraction, self.split_seed)
        train, val = stratified_split(labels[rest], self.val_fraction, self.split_seed + 1)
        return {"train": rest[train], "val": rest[val], "test": test}

    def check_labels_known(self, table: pd.DataFrame, split_rows: dict[str, np.ndarray]) -> None:
        """Every label must be one of the model's classes (validation/test labels: classes the
        model was trained on)."""
        known = set(self._class_names or [])
        what = "in class_names" if self._names_given else "a training class"
        problems = [Problem(int(row), f"{split} label {key!r} is not {what} {self._class_names}")
                    for split in SPLITS
                    for row, names in zip(split_rows[split], self.task_targets.row_labels(
                        table.iloc[split_rows[split]]), strict=True)
                    for key in names if key not in known]
        if problems:
            raise DataValidationError(self.source, sorted(problems, key=lambda p: p.row))

    # -- loaders -----------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        """A loader that records its position, with the resumable sampler: a checkpoint taken
        inside an epoch continues with the next batch the interrupted run would have had."""
        sampler = self.train_sampler()
        sampler.set_epoch(self._resume_epoch)  # before the state: see EpochSeededSampler
        loader = self._loader("train", sampler=sampler,
                              drop_last=self.last_batch_of_one_under_batchnorm(len(sampler)))
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
                 "rank": trainer.global_rank if trainer else 0, "seed": global_seed()}
        if self.sampler == "random":
            return RandomShardSampler(len(self.datasets["train"]), **shard)
        from datamodules.optional_samplers import chosen_sampler

        return chosen_sampler(self, shard)

    def last_batch_of_one_under_batchnorm(self, samples: int) -> bool:
        """True, said in one line, where this rank's last training batch would hold one sample
        and the model has BatchNorm, which cannot normalise one value per channel in training
        (BatchNorm1d; BatchNorm2d on 1x1 maps, as a ResNet's last block on 32x32 images) and
        would stop the run there every epoch: that batch is dropped (``drop_last``)."""
        model = self.trainer.lightning_module if self.trainer else None
        if model is None or samples <= 1 or samples % self.batch_size != 1:
            return False
        norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
        if not any(isinstance(module, norms) for module in model.modules()):
            return False
        rank_zero_info(f"{type(self).__name__}: the last training batch would hold 1 of "
                       f"{samples} samples, which {type(model).__name__}'s BatchNorm cannot "
                       "train on: it is left out each epoch (drop_last); a batch_size that "
                       f"does not leave 1 over keeps it")
        return True

    def loader_workers(self, split: str = "train") -> int:
        """``num_workers``; with ``None``, none for a split whose dataset says its samples are
        ``ready_in_memory`` (a worker would only copy them to the main process: on 5,000 cached
        28x28 images two workers took 0.41 s an epoch and none 0.29 s, 8 % of the whole run,
        benchmarks/user_folder.py), else one per CPU shared by this node's ranks."""
        if self.num_workers is not None:
            return self.num_workers
        if getattr(self.datasets.get(split), "ready_in_memory", False):
            return 0
        return default_num_workers(self.trainer.num_devices if self.trainer else 1)

    def _loader(self, split: str, sampler: EpochSeededSampler | None = None,
                drop_last: bool = False) -> DataLoader:
        """The training loader saves its position; evaluation restarts from the start anyway."""
        workers = self.loader_workers(split)
        if workers == 0:
            # No workers is a choice here; Lightning's advice (on more than two CPUs) to use
            # more would tell the user to undo it. Warning filters are process-wide.
            warnings.filterwarnings("ignore", message=r"The '\w+' does not have many workers",
                                    category=PossibleUserWarning)
            if split == "train" and self.num_workers is None:
                rank_zero_info(f"{self.source}: num_workers: null: no loader workers, the "
                               "samples are ready in memory (set num_workers to use some)")
        # The workers' base seed comes from the loader's own generator, not torch's global one,
        # which each new iterator would move: dropout would depend on workers and resuming.
        generator = torch.Generator().manual_seed(global_seed())
        return (ResumableLoader if split == "train" else DataLoader)(
            self.datasets[split], batch_size=self.batch_size, sampler=sampler,
            drop_last=drop_last, num_workers=workers, persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(), generator=generator)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        training = self.trainer is not None and self.trainer.training
        transform = self.train_batch_transforms if training else self.eval_batch_transforms
        if transform is None:
            return batch
        if isinstance(batch, Tensor):  # predict batches (and task none) are the inputs alone
            return transform(batch)
        if self.task == "segmentation" and isinstance(batch, (tuple, list)) and len(batch) == 2:
            return self.task_targets.transform_batch(transform, *batch)
        if isinstance(batch, (tuple, list)):  # (inputs, targets, ...): the inputs only
            inputs, *rest = batch
            return (transform(inputs), *rest)
        return batch

    # -- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The class order (prediction needs it) and, while fitting, what a resume needs
        (:mod:`datamodules.resume`)."""
        state: dict[str, Any] = {"class_names": list(self._class_names or [])}
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"
        if fitting and isinstance(self._train_loader, StatefulDataLoader):
            from datamodules.resume import resume_state  # here: resume.py imports base

            state.update(resume_state(self, self._train_loader))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("class_names")
        if saved and self._class_names and saved != self._class_names:
            raise DataError(f"{self.source}: the checkpoint's classes {saved} differ from the "
                             f"data's {self._class_names}")
        self._class_names = list(saved or self._class_names or []) or None
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"
        if fitting and "train_loader" in state_dict:
            from datamodules.resume import restore_resume_state

            restore_resume_state(self, state_dict)


def flatten_transforms(transform: Any) -> Iterator[Any]:
    """The steps of nested ``Compose`` pipelines and ``nn.Sequential`` s, in order (to find e.g.
    their ``Normalize``)."""
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)) or isinstance(transform, nn.Sequential):
        for step in inner if isinstance(inner, (list, tuple)) else transform:
            yield from flatten_transforms(step)
    elif transform is not None:
        yield transform


def check_eval_normalises_like_training(owner: str, train: list[Any], evaluate: list[Any]
                                        ) -> None:
    """Refuse pipelines whose training side (``train``: per-image and per-batch transforms)
    and evaluation side (validation, test, predict) normalise differently: one would see
    images on another scale, and its metrics or predictions would be quietly wrong."""
    steps: dict[str, list[Any]] = {}
    found: dict[str, list[str]] = {}
    for side, transforms in (("training", train), ("evaluation", evaluate)):
        steps[side] = [step for transform in transforms for step in flatten_transforms(transform)]
        found[side] = [f"Normalize(mean={[float(m) for m in step.mean]}, "
                       f"std={[float(v) for v in step.std]})" for step in steps[side]
                       if isinstance(step, (v2.Normalize, transforms_v1.Normalize))]
    if found["training"] != found["evaluation"]:
        from datamodules.normalise_mismatch import refuse_normalise_mismatch

        refuse_normalise_mismatch(owner, steps, found)


def targets_tensor(targets: np.ndarray | None) -> Tensor | None:
    """Targets as a tensor of their own dtype, or None where the items are the inputs alone."""
    return None if targets is None else torch.as_tensor(targets)
