"""scikit-learn's 8x8 digits, written to disk as PNG files + ``labels.csv`` and read back through
:class:`ImageCSVDataModule`: the default run exercises the pipeline a user's own images go
through, with no download."""

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
    """Write the 1,797 digits as ``images/<i>.png`` and ``labels.csv`` under ``root``, into a
    temporary sibling folder renamed into place: a killed run leaves no half-written data set."""
    from sklearn.datasets import load_digits  # only this data set needs sklearn

    digits = load_digits()
    # Pixel values are 0..16: scaled to the full 8-bit range, as a real image's.
    images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        (staging / "images").mkdir()
        names = [f"images/{i:04d}.png" for i in range(len(images))]
        for name, image in zip(names, images, strict=True):
            write_png(image.unsqueeze(0), str(staging / name))
        table = pd.DataFrame({"path": names, "label": digits.target})
        table.to_csv(staging / "labels.csv", index=False)
        os.replace(staging, root)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        # An OSError (from the rename, or writing while another run renames) is fine where a
        # concurrent run finished first: the digits are there.
        if not isinstance(error, OSError) or not (root / "labels.csv").is_file():
            raise


class DigitsDataModule(ImageCSVDataModule):
    """The default data: 8x8 grayscale digits, 10 classes, stratified 80/20 test split and 10 %
    of the rest for validation. Defaults for 1,797 tiny images: batches of 16, decoded once into
    memory, no loader workers. The classes are known without the files, so the model can be built
    before ``prepare_data`` writes them (under torchrun only local rank 0 writes)."""

    def __init__(
        self,
        root: str | Path = "data/digits",
        read_mode: ReadMode = "GRAY",
        batch_size: int = 16,
        cache_images: bool = True,
        num_workers: int | None = 0,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("class_names") is None:
            kwargs["class_names"] = [str(digit) for digit in range(10)]
        super().__init__(annotations=Path(root) / "labels.csv", read_mode=read_mode,
                         batch_size=batch_size, cache_images=cache_images,
                         num_workers=num_workers, **kwargs)

    def prepare_data(self) -> None:  # Lightning: one process per node, before any setup
        if not self.annotations.is_file():
            write_digits(self.annotations.parent)
        super().prepare_data()
