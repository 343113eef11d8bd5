"""The default data pipeline: digits on disk as PNG + CSV, seeded stratified splits, and the
CSV + image-folder datamodule that reads them back."""

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch import seed_everything
from torchvision.io import decode_image, write_png

from datamodules.digits import DigitsDataModule
from datamodules.image_csv import ImageCSVDataModule
from datamodules.splits import stratified_split


def test_digits_are_written_as_pngs_that_decode_to_the_original_pixels(digits_root: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    table = pd.read_csv(digits_root / "labels.csv")
    assert len(table) == 1797
    assert table["label"].tolist() == digits.target.tolist()
    for i in (0, 500, 1796):
        image = decode_image(str(digits_root / table["path"][i]))
        assert image.shape == (1, 8, 8) and image.dtype == torch.uint8
        expected = torch.from_numpy(digits.images[i] * 255 / 16).round().to(torch.uint8)
        assert torch.equal(image[0], expected)


def test_stratified_split_is_seeded_disjoint_and_keeps_every_class_on_both_sides() -> None:
    labels = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 3)
    kept, held = stratified_split(labels, 0.2, seed=7)
    again_kept, again_held = stratified_split(labels, 0.2, seed=7)
    _, other_held = stratified_split(labels, 0.2, seed=8)

    assert np.array_equal(held, again_held) and np.array_equal(kept, again_kept)
    assert not np.array_equal(held, other_held)
    assert set(kept).isdisjoint(held) and len(kept) + len(held) == len(labels)
    assert Counter(labels[held]) == {"a": 10, "b": 6, "c": 1}
    assert set(labels[kept]) == {"a", "b", "c"}


def test_digits_splits_are_20_percent_test_10_percent_val_and_ignore_the_training_seed(
    digits_root: Path,
) -> None:
    test_sets = []
    for seed in (0, 1):
        seed_everything(seed)
        data = DigitsDataModule(root=digits_root, num_workers=0)
        data.setup("fit")
        sizes = {split: len(ds) for split, ds in data.datasets.items()}
        assert sizes == {"train": 1293, "val": 144, "test": 360}
        paths = {split: set(ds.paths) for split, ds in data.datasets.items()}
        assert paths["train"].isdisjoint(paths["val"]) and paths["train"].isdisjoint(paths["test"])
        assert paths["val"].isdisjoint(paths["test"])
        test_sets.append(paths["test"])
        assert data.class_names == [str(d) for d in range(10)]
    assert test_sets[0] == test_sets[1]


def test_string_labels_become_sorted_classes_and_images_get_the_requested_channels(
    tmp_path: Path,
) -> None:
    rows = []
    for i in range(12):
        label = ["cat", "dog", "bird"][i % 3]
        channels = 1 if i % 2 else 3  # a mix of gray and RGB files
        image = torch.full((channels, 5, 7), 20 * i, dtype=torch.uint8)
        write_png(image, str(tmp_path / f"{i}.png"))
        rows.append({"file": f"{i}.png", "animal": label, "fold": "train" if i < 9 else "test"})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)

    data = ImageCSVDataModule(tmp_path / "table.csv", path_column="file", label_column="animal",
                              split_column="fold", read_mode="RGB", num_workers=0)
    data.setup("fit")

    assert data.class_names == ["bird", "cat", "dog"]
    assert data.state_dict() == {"class_names": ["bird", "cat", "dog"]}
    image, target = data.datasets["train"][1]  # a gray file, read as RGB
    assert image.shape == (3, 5, 7) and image.dtype == torch.float32
    assert data.class_names[int(target)] == "dog"
    assert len(data.datasets["test"]) == 3 and len(data.datasets["val"]) == 0
    batch, targets = next(iter(data.train_dataloader()))
    assert batch.shape[1:] == (3, 5, 7) and targets.dtype == torch.int64


def test_missing_label_column_names_the_file_and_the_column(tmp_path: Path) -> None:
    pd.DataFrame({"path": ["a.png"], "class": [1]}).to_csv(tmp_path / "t.csv", index=False)
    data = ImageCSVDataModule(tmp_path / "t.csv", num_workers=0)
    with pytest.raises(ValueError, match=r"t\.csv: missing column\(s\) \['label'\]"):
        data.setup("fit")
