"""Example data for the tasks besides classification, from scikit-learn's bundled sets (nothing
is downloaded), read through the same datamodules a user's own data goes through:

* :class:`DiabetesDataModule` (regression): 442 patients, 10 measurements, disease progression
  a year later (25-346), a DataFrame;
* :class:`DigitTagsDataModule` (multilabel): the 8x8 digit images tagged ``even`` and
  ``large`` (5 and above), two 0/1 columns of ``labels.csv``;
* :class:`DigitStrokesDataModule` (segmentation): the digit images with a mask per image, each
  stroke pixel labelled by its digit (classes ``background``, ``0`` ... ``9``).

``configs/examples/*.yaml`` train each with the template's module for its task.
"""

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from datamodules.base import Task
from datamodules.dataframe import DataFrameDataModule
from datamodules.digits import write_digits
from datamodules.image_csv import ImageCSVDataModule, ReadMode

STROKE_THRESHOLD = 96  # of 255: pixels above it are a digit's stroke
STROKE_CLASSES = ["background", *map(str, range(10))]


class DiabetesDataModule(DataFrameDataModule):
    """scikit-learn's diabetes table, the target in its own units (not scaled)."""

    def __init__(self, task: Task = "regression", label_column: str | list[str] | None = "target",
                 **kwargs: Any) -> None:
        from sklearn.datasets import load_diabetes  # only this example needs sklearn

        super().__init__(data=load_diabetes(as_frame=True, scaled=False).frame, task=task,
                         label_column=label_column, **kwargs)


def write_digit_tasks(root: Path) -> None:
    """The digits under ``root/digits`` (as the default run writes them), ``tags.csv`` (the
    multilabel table) and ``strokes.csv`` with ``masks/`` (the segmentation table), written in
    a temporary sibling and renamed into place as :func:`write_digits` does."""
    digits = root / "digits"
    if not (digits / "labels.csv").is_file():
        write_digits(digits)
    labels = pd.read_csv(digits / "labels.csv")
    staging = Path(tempfile.mkdtemp(prefix=".tasks-", dir=root))
    try:
        tags = pd.DataFrame({"path": "digits/" + labels["path"],
                             "even": (labels["label"] % 2 == 0).astype(int),
                             "large": (labels["label"] >= 5).astype(int)})
        tags.to_csv(staging / "tags.csv", index=False)
        (staging / "masks").mkdir()
        masks = []
        for path, digit in zip(labels["path"], labels["label"], strict=True):
            stroke = np.array(Image.open(digits / path)) > STROKE_THRESHOLD
            name = f"masks/{Path(path).name}"
            Image.fromarray((stroke * (digit + 1)).astype(np.uint8)).save(staging / name)
            masks.append(name)
        strokes = pd.DataFrame({"path": "digits/" + labels["path"], "mask": masks})
        strokes.to_csv(staging / "strokes.csv", index=False)
        for name in ("masks", "tags.csv", "strokes.csv"):  # strokes.csv last: "complete"
            os.replace(staging / name, root / name)
    except OSError:
        if not (root / "strokes.csv").is_file():  # not a concurrent run that finished first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class DigitTagsDataModule(ImageCSVDataModule):
    """Multilabel: each digit image tagged ``even`` and/or ``large``."""

    def __init__(self, root: str | Path = "data/digit_tasks", task: Task = "multilabel",
                 label_column: str | list[str] | None = ("even", "large"),
                 read_mode: ReadMode = "GRAY", cache_images: bool = True,
                 num_workers: int | None = 0, **kwargs: Any) -> None:
        super().__init__(annotations=Path(root) / "tags.csv", task=task,
                         label_column=list(label_column or []) or None, read_mode=read_mode,
                         cache_images=cache_images, num_workers=num_workers, **kwargs)
        self.root = Path(root)

    def prepare_data(self) -> None:
        if not (self.root / "strokes.csv").is_file():
            write_digit_tasks(self.root)
        super().prepare_data()


class DigitStrokesDataModule(ImageCSVDataModule):
    """Segmentation: each stroke pixel labelled by its digit, the rest background."""

    def __init__(self, root: str | Path = "data/digit_tasks", task: Task = "segmentation",
                 mask_column: str | None = "mask", class_names: list[str] | None = None,
                 read_mode: ReadMode = "GRAY", cache_images: bool = True,
                 num_workers: int | None = 0, **kwargs: Any) -> None:
        super().__init__(annotations=Path(root) / "strokes.csv", task=task,
                         mask_column=mask_column, read_mode=read_mode,
                         class_names=class_names or STROKE_CLASSES, cache_images=cache_images,
                         num_workers=num_workers, **kwargs)
        self.root = Path(root)

    def prepare_data(self) -> None:
        if not (self.root / "strokes.csv").is_file():
            write_digit_tasks(self.root)
        super().prepare_data()
