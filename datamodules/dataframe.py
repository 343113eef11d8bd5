"""Any task from a pandas DataFrame (in memory, or a CSV/Parquet file): numeric feature
columns for tabular models, or one image column holding file paths, encoded bytes or arrays."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from datamodules.base import (
    TableDataModule,
    check_eval_normalises_like_training,
    read_table,
    targets_tensor,
)
from datamodules.image_csv import ImageCSVDataset, ReadMode
from datamodules.samplers import call_with_seed
from datamodules.validation import (
    DataValidationError,
    Header,
    Problem,
    check_image_file,
    check_samples_stack,
)
from errors import DataError


def mostly_numbers(cells: pd.Series) -> bool:
    """A numeric column, or one read as text because of a stray cell ('?', '1,5') while most of
    its filled cells are numbers: a feature, whose bad cells are reported per row."""
    if pd.api.types.is_numeric_dtype(cells):
        return True
    filled = cells.dropna()
    filled = filled[filled.astype(str).str.strip() != ""]
    if not len(filled) or not all(isinstance(v, (str, int, float)) for v in filled):
        return False
    return bool(pd.to_numeric(filled, errors="coerce").notna().mean() > 0.5)


class FeatureDataset(Dataset):
    """Rows of standardised float32 features with their targets, or the features alone
    (``targets`` None: prediction, task none)."""

    ready_in_memory = True  # indexing tensors: the loader needs no workers (base.py)

    def __init__(self, features: np.ndarray, targets: np.ndarray | None) -> None:
        self.features = torch.as_tensor(features, dtype=torch.float32)
        self.targets = targets_tensor(targets)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> Any:
        if self.targets is None:
            return self.features[index]
        return self.features[index], self.targets[index]


class InMemoryImageDataset(Dataset):
    """Images held in the DataFrame itself: encoded bytes (PNG/JPEG/...) or arrays (HW/HWC)."""

    def __init__(self, cells: Sequence[Any], targets: np.ndarray | None, read_mode: ReadMode,
                 transform: v2.Transform | None) -> None:
        self.cells = list(cells)
        self.targets = targets_tensor(targets)
        self.mode = ImageReadMode[read_mode]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, index: int) -> Any:
        image = cell_to_image(self.cells[index], self.mode)
        if self.transform is not None:
            image = call_with_seed(self.transform, image, seed=getattr(index, "seed", None))
        return image if self.targets is None else (image, self.targets[index])


def cell_to_image(cell: Any, mode: ImageReadMode) -> Tensor:
    """Encoded bytes are decoded; arrays are taken as HW or HWC pixels. Result: uint8 CHW."""
    if isinstance(cell, (bytes, bytearray, memoryview)):
        image = decode_image(torch.frombuffer(bytearray(cell), dtype=torch.uint8), mode=mode)
    else:
        array = torch.as_tensor(np.asarray(cell))
        image = array.unsqueeze(0) if array.ndim == 2 else array.permute(2, 0, 1)
        if mode == ImageReadMode.GRAY and image.shape[0] == 3:
            image = TF.rgb_to_grayscale(image)
        elif mode == ImageReadMode.RGB and image.shape[0] == 1:
            image = image.expand(3, -1, -1)
    if image.dtype != torch.uint8:
        image = TF.to_dtype(image, torch.uint8, scale=True)
    return image.contiguous()


class DataFrameDataModule(TableDataModule):
    """Train/val/test loaders over a DataFrame.

    Args:
        data: a DataFrame (from Python) or a path to a ``.csv`` / ``.parquet`` file (from YAML).
        feature_columns: numeric columns to use as features; ``None`` takes every numeric column
            except the label, split and weight columns. Ignored with ``image_column``.
        standardize: scale features to zero mean and unit variance with statistics fit on the
            training split only (saved in checkpoints, reused for val/test/predict).
        image_column: a column of image file paths (relative to ``image_root``), encoded bytes
            or arrays, instead of features.
        image_root: folder for relative paths in ``image_column``; default: the working
            directory (a DataFrame has no folder of its own).
        read_mode / train_transforms / eval_transforms: as for images in
            :class:`~datamodules.image_csv.ImageCSVDataModule`.
        predict_path: a table (CSV, Parquet, ...) of rows to predict, with the training
            table's feature (or image) columns; target columns may be there or not.
        **kwargs: split, sampler, loader and batch-transform options of
            :class:`~datamodules.base.TableDataModule`.
    """

    def __init__(
        self,
        data: str | Path | pd.DataFrame,
        feature_columns: list[str] | None = None,
        standardize: bool = True,
        image_column: str | None = None,
        image_root: str | Path | None = None,
        read_mode: ReadMode = "RGB",
        train_transforms: v2.Transform | None = None,
        eval_transforms: v2.Transform | None = None,
        predict_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["data", "train_transforms", "eval_transforms",
                                          "train_batch_transforms", "eval_batch_transforms",
                                          "class_names"])
        self.data = data
        self.feature_columns = feature_columns
        self.standardize = standardize
        self.image_column = image_column
        self.image_root = Path(image_root) if image_root is not None else Path.cwd()
        self.read_mode = read_mode
        to_float = v2.ToDtype(torch.float32, scale=True)
        self.eval_transforms = eval_transforms or to_float
        self.train_transforms = train_transforms or self.eval_transforms
        if image_column is not None:
            check_eval_normalises_like_training(
                type(self).__name__, [self.train_transforms, self.train_batch_transforms],
                [self.eval_transforms, self.eval_batch_transforms])
        self.predict_path = Path(predict_path) if predict_path is not None else None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self._headers: dict[Path, Header] = {}  # size and mode of each checked image file
        self.trained_features: list[str] | None = None  # from a checkpoint: predict uses them
        leaked = [c for c in feature_columns or [] if c in self.label_columns]
        if leaked:
            raise DataError(f"feature_columns include the label column(s) {leaked}: the model "
                            "would see its own target; remove them from feature_columns")
        if self.task == "segmentation" and image_column is None:
            raise DataError("task: segmentation needs image_column (image paths) beside "
                            "mask_column")

    @property
    def source(self) -> str:
        return str(self.data) if not isinstance(self.data, pd.DataFrame) else "DataFrame"

    def load_table(self) -> pd.DataFrame:
        if isinstance(self.data, pd.DataFrame):
            return self.data
        return read_table(Path(self.data), what="data file")

    @property
    def num_features(self) -> int | None:
        """Feature columns per row (an MLP's ``in_features``); None with ``image_column``."""
        if self.image_column is not None:
            return None
        return len(self.features(self.table_and_splits()[0]))

    def required_columns(self) -> list[str]:
        extra = [self.image_column] if self.image_column else list(self.feature_columns or [])
        return [*extra, *super().required_columns()]

    @property
    def in_channels(self) -> int | None:
        return {"GRAY": 1, "RGB": 3}.get(self.read_mode) if self.image_column else None

    def features(self, table: pd.DataFrame) -> list[str]:
        if self.feature_columns:
            return list(self.feature_columns)
        if self.trained_features is not None:
            return list(self.trained_features)
        reserved = set(super().required_columns())
        return [c for c in table.columns if c not in reserved and mostly_numbers(table[c])]

    def feature_values(self, table: pd.DataFrame) -> np.ndarray:
        """The feature columns as float64 (rows with bad cells are refused or skipped by now)."""
        return table[self.features(table)].apply(pd.to_numeric).to_numpy(dtype=np.float64)

    def say_columns_left_out(self, table: pd.DataFrame) -> None:
        """With ``feature_columns: null``, name the columns that are not features, which would
        otherwise vanish without a word."""
        if self.feature_columns or self.trained_features is not None:
            return
        reserved = set(super().required_columns())
        features = set(self.features(table))
        left_out = [c for c in table.columns if c not in reserved and c not in features]
        if left_out:
            rank_zero_info(f"{self.source}: feature_columns: null takes the {len(features)} "
                           f"numeric columns; left out as not numeric: {left_out}")

    def row_problems(self, table: pd.DataFrame) -> list[Problem]:
        if self.image_column is None:
            if not self.features(table):
                raise DataError(f"{self.source}: no numeric feature columns; set "
                                 "feature_columns or image_column")
            self.say_columns_left_out(table)
            return non_finite_feature_problems(table, self.features(table))
        problems = []
        for row, cell in enumerate(table[self.image_column]):
            if isinstance(cell, (str, Path)):
                message = check_image_file(self.image_root / cell, self.image_root, decode=True,
                                           headers=self._headers)
            else:
                try:
                    cell_to_image(cell, ImageReadMode[self.read_mode])
                    message = None
                except (RuntimeError, TypeError, ValueError) as error:
                    message = f"cannot read the image in column {self.image_column!r}: {error}"
            if message:
                problems.append(Problem(row, message))
        return problems

    def check_batches_stack(self, table: pd.DataFrame, split_rows: dict[str, np.ndarray]
                            ) -> None:
        """Image files of a split must stack into batches after its transforms; encoded bytes
        and arrays in the column are not probed."""
        if self.image_column is None or self.batch_size == 1 or not self._headers:
            return
        for split, rows in split_rows.items():
            cells = table.iloc[rows][self.image_column].tolist()
            if not all(isinstance(c, (str, Path)) for c in cells):
                continue
            paths = [self.image_root / c for c in cells]
            transform = self.train_transforms if split == "train" else self.eval_transforms
            masks = ([self.image_root / str(m) for m in table.iloc[rows][self.mask_column]]
                     if self.mask_column else None)
            check_samples_stack(ImageCSVDataset(paths, None, self.read_mode, transform,
                                                masks=masks),
                                paths, self._headers, self.source,
                                "train_transforms" if split == "train" else "eval_transforms")

    def fit_on_train(self, train: pd.DataFrame) -> None:
        if self.image_column is None and self.standardize:
            values = self.feature_values(train)
            self.mean = values.mean(axis=0)
            # A constant feature would divide by zero: leave it centred but unscaled.
            self.std = np.where(values.std(axis=0) > 0, values.std(axis=0), 1.0)

    def build_dataset(self, split: str, table: pd.DataFrame, targets: np.ndarray | None
                      ) -> Dataset:
        transform = self.train_transforms if split == "train" else self.eval_transforms
        if self.image_column is None:
            values = self.feature_values(table)
            if self.mean is not None and self.std is not None:
                values = (values - self.mean) / self.std
            return FeatureDataset(values, targets)
        cells = table[self.image_column].tolist()
        masks = ([self.image_root / str(m) for m in table[self.mask_column]]
                 if self.mask_column and split != "predict" else None)
        if all(isinstance(c, (str, Path)) for c in cells):
            return ImageCSVDataset([self.image_root / c for c in cells], targets, self.read_mode,
                                   transform, masks=masks)
        if masks is not None:
            raise DataError(f"{self.source}: task: segmentation needs image_column to hold "
                            "image paths")
        return InMemoryImageDataset(cells, targets, self.read_mode, transform)

    def build_predict_dataset(self) -> Dataset:
        """The rows of ``predict_path``, through the training split's feature statistics (from
        the checkpoint), inputs only."""
        if self.predict_path is None:
            raise DataError("nothing to predict: set data.init_args.predict_path to a table of "
                            "rows with the training table's feature columns")
        table = read_table(self.predict_path, what="predict table").reset_index(drop=True)
        if table.empty:
            raise DataError(f"{self.predict_path}: the table has no rows")
        needed = [self.image_column] if self.image_column else self.features(table)
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise DataError(f"{self.predict_path}: missing column(s) {missing}; found "
                            f"{list(table.columns)}")
        if self.image_column is None:
            problems = non_finite_feature_problems(table, needed)
            if problems:
                raise DataValidationError(str(self.predict_path), problems)
        return self.build_dataset("predict", table, None)

    def setup(self, stage: str | None = None) -> None:
        if stage != "predict":  # the predict rows are read in predict_dataloader
            super().setup(stage)

    def predict_dataloader(self) -> Any:
        # Built here, not in setup: Lightning restores the checkpoint's datamodule state (the
        # feature columns and their statistics) after setup and before the loaders.
        self.datasets["predict"] = self.build_predict_dataset()
        return super().predict_dataloader()

    def preprocessing(self) -> dict[str, Any] | None:
        """The feature columns in order and their standardisation, which a model exported
        without this code needs (saved by callbacks.preprocessing_metadata); None for images
        and before the table is read."""
        if self.image_column is not None or self._table is None:
            return None
        columns = self.features(self._table)
        return {"input_shape": [len(columns)], "input_dtype": "float32",
                "feature_columns": columns,
                "mean": self.mean.tolist() if self.mean is not None else None,
                "std": self.std.tolist() if self.std is not None else None}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.mean is not None and self.std is not None:
            state["feature_columns"] = self.features(self.split_tables["train"])
            state["mean"] = self.mean.tolist()
            state["std"] = self.std.tolist()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "feature_columns" in state_dict:
            self.trained_features = list(state_dict["feature_columns"])
        if "mean" in state_dict:
            self.mean = np.asarray(state_dict["mean"])
            self.std = np.asarray(state_dict["std"])


def non_finite_feature_problems(table: pd.DataFrame, columns: Sequence[str]) -> list[Problem]:
    """Rows whose feature columns are not numbers, or are NaN / inf."""
    problems = []
    for column in columns:
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        for position in np.flatnonzero(~np.isfinite(values)):
            raw = table[column].iloc[position]
            raw = raw.item() if hasattr(raw, "item") else raw  # nan, not np.float64(nan)
            problems.append(Problem(int(position), f"feature {column!r} is {raw!r}, not a "
                                                   "finite number"))
    return sorted(problems, key=lambda p: p.row)
