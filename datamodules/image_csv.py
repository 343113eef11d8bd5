"""Images listed in an annotations table (CSV or anything pandas reads) next to an image folder.

This is the shape every PyTorch tutorial uses for custom data: ``labels.csv`` with a path column
and a label column, paths relative to an image root. Images are decoded with
``torchvision.io.decode_image`` (about twice as fast as PIL on small PNGs) into uint8 CHW tensors
and then go through a ``torchvision.transforms.v2`` pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from datamodules.splits import stratified_split

ReadMode = Literal["GRAY", "RGB", "UNCHANGED"]
SPLITS = ("train", "val", "test")


class ImageCSVDataset(Dataset):
    """(image, target) pairs from a list of files; ``target`` is -1 where there is no label."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: Sequence[int] | None = None,
        read_mode: ReadMode = "RGB",
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.targets = torch.as_tensor(targets if targets is not None else [-1] * len(paths))
        self.mode = ImageReadMode[read_mode]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = decode_image(self.paths[index], mode=self.mode)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def default_num_workers() -> int:
    """One loader worker per CPU this process may use, shared between DDP ranks on a node."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(0, min(8, (cpus or 1) // ranks))


class ImageCSVDataModule(LightningDataModule):
    """Train/val/test loaders over an annotations table and an image folder.

    Args:
        annotations: table with one row per image (``.csv``, ``.tsv``, ``.parquet``, ``.json``).
        image_root: folder the paths are relative to; defaults to the table's folder.
        path_column / label_column: column names in the table.
        split_column: optional column with ``train`` / ``val`` / ``test`` per row; without it
            the rows are split with a seeded stratified split.
        test_fraction / val_fraction: the test share of all rows, then the validation share of
            the rest (only used without ``split_column``).
        split_seed: seed of that split, separate from the training seed so every training seed
            is scored on the same test set.
        read_mode: ``GRAY`` (1 channel), ``RGB`` (3) or ``UNCHANGED`` (as stored).
        train_transforms / eval_transforms: ``torchvision.transforms.v2`` pipelines on uint8
            CHW tensors; the eval one is used for validation, test and predict.
        batch_size: per device (the global batch is ``batch_size * devices * num_nodes``).
        num_workers: loader processes; ``None`` picks one per available CPU (split across
            the ranks on a node).
    """

    def __init__(
        self,
        annotations: str | Path,
        image_root: str | Path | None = None,
        path_column: str = "path",
        label_column: str = "label",
        split_column: str | None = None,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        read_mode: ReadMode = "RGB",
        train_transforms: v2.Transform | None = None,
        eval_transforms: v2.Transform | None = None,
        batch_size: int = 64,
        num_workers: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["train_transforms", "eval_transforms"])
        self.annotations = Path(annotations)
        self.image_root = Path(image_root) if image_root is not None else None
        # Without transforms, images still reach the model as floats in [0, 1].
        self.eval_transforms = eval_transforms or v2.ToDtype(torch.float32, scale=True)
        self.train_transforms = train_transforms or self.eval_transforms
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.class_names: list[str] = []
        self.datasets: dict[str, ImageCSVDataset] = {}

    # -- reading the table -------------------------------------------------------------------
    def read_table(self) -> pd.DataFrame:
        if not self.annotations.is_file():
            raise FileNotFoundError(f"annotations file not found: {self.annotations}")
        readers = {".parquet": pd.read_parquet, ".json": pd.read_json, ".tsv": _read_tsv}
        table = readers.get(self.annotations.suffix.lower(), pd.read_csv)(self.annotations)
        needed = [self.hparams.path_column, self.hparams.label_column]
        if self.hparams.split_column:
            needed.append(self.hparams.split_column)
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise ValueError(
                f"{self.annotations}: missing column(s) {missing}; found {list(table.columns)}"
            )
        if table.empty:
            raise ValueError(f"{self.annotations}: the table has no rows")
        return table

    def split_rows(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        """Row indices per split: from the split column, or a stratified seeded split."""
        if self.hparams.split_column:
            column = table[self.hparams.split_column].astype(str).str.lower()
            return {s: np.flatnonzero(column == s) for s in SPLITS}
        labels = table[self.hparams.label_column].astype(str).to_numpy()
        seed = self.hparams.split_seed
        rest, test = stratified_split(labels, self.hparams.test_fraction, seed)
        train, val = stratified_split(labels[rest], self.hparams.val_fraction, seed + 1)
        return {"train": rest[train], "val": rest[val], "test": test}

    # -- Lightning hooks ---------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        table = self.read_table()
        rows = self.split_rows(table)
        labels = table[self.hparams.label_column]
        self.class_names = class_names_from(labels.iloc[rows["train"]])
        index = {name: i for i, name in enumerate(self.class_names)}
        root = self.image_root or self.annotations.parent
        paths = table[self.hparams.path_column].astype(str)
        for split in SPLITS:
            split_labels = labels.iloc[rows[split]].map(_label_key)
            unknown = sorted(set(split_labels) - set(index))
            if unknown:
                raise ValueError(
                    f"{self.annotations}: {split} rows have label(s) {unknown[:10]} that are not "
                    f"in the training split's classes {self.class_names}"
                )
            transform = self.train_transforms if split == "train" else self.eval_transforms
            self.datasets[split] = ImageCSVDataset(
                [root / p for p in paths.iloc[rows[split]]],
                [index[k] for k in split_labels],
                self.hparams.read_mode,
                transform,
            )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            self.datasets[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            pin_memory=torch.cuda.is_available(),
        )

    def state_dict(self) -> dict[str, list[str]]:
        # Saved in every checkpoint: prediction needs the class order the model was trained on.
        return {"class_names": list(self.class_names)}


def _label_key(value: object) -> str:
    """Labels compare as strings so 3, "3" and 3.0 read from different files agree."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def class_names_from(labels: pd.Series) -> list[str]:
    """Sorted class names; integer-like labels sort numerically (2 before 10)."""
    keys = sorted({_label_key(v) for v in labels})
    if all(k.lstrip("-").isdigit() for k in keys):
        keys.sort(key=int)
    return keys


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")
