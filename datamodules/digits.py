"""scikit-learn's 8x8 digits, written to disk as PNG files + ``labels.csv`` and read back through
:class:`ImageCSVDataModule` — so the default run exercises the same file pipeline a user's own
images go through, with no download."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torchvision.io import write_png

from datamodules.image_csv import ImageCSVDataModule, ReadMode


def write_digits(root: Path) -> None:
    """Write the 1,797 digits as ``images/<i>.png`` and ``labels.csv`` under ``root``.

    The files are written into a temporary sibling folder and renamed into place, so a killed
    run never leaves a half-written data set that later runs would take as complete.
    """
    from sklearn.datasets import load_digits  # imported here: only this data set needs sklearn

    digits = load_digits()
    # Pixel values are 0..16; scale to the full 8-bit range as a real image would have.
    images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        (staging / "images").mkdir()
        rows = []
        for i, (image, label) in enumerate(zip(images, digits.target, strict=True)):
            name = f"images/{i:04d}.png"
            write_png(image.unsqueeze(0), str(staging / name))
            rows.append((name, int(label)))
        pd.DataFrame(rows, columns=["path", "label"]).to_csv(staging / "labels.csv", index=False)
        os.replace(staging, root)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (root / "labels.csv").is_file():  # not a concurrent run that finished first
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

class DigitsDataModule(ImageCSVDataModule):
    """The default data: 8x8 grayscale digits, 10 classes, stratified 80/20 test split and 10 %
    of the rest for validation (fixed ``split_seed``)."""

    def __init__(
        self, root: str | Path = "data/digits", read_mode: ReadMode = "GRAY", **kwargs: Any
    ) -> None:
        super().__init__(annotations=Path(root) / "labels.csv", read_mode=read_mode, **kwargs)
        self.root = Path(root)

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node (rank 0) before the others set up.
        if not (self.root / "labels.csv").is_file():
            write_digits(self.root)

