"""The datamodules state their task: targets reach the module in their natural form and units,
splits are stratified where that means something, and data that does not fit the task is
refused in one line before the first step."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from datamodules.dataframe import DataFrameDataModule
from datamodules.image_csv import ImageCSVDataModule
from errors import DataError


def table(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                         "price": 250.0 + 40.0 * x[:, 0] + rng.normal(size=rows),
                         "weight": 3.5 + x[:, 1],
                         "cat": (x[:, 0] > 0).astype(int), "dog": (x[:, 1] > 0.5).astype(int)})


def fitted(data: DataFrameDataModule) -> DataFrameDataModule:
    data.setup("fit")
    return data


def test_a_regression_target_reaches_the_model_as_the_tables_float_values() -> None:
    frame = table()
    data = fitted(DataFrameDataModule(frame, task="regression", label_column="price",
                                      feature_columns=["a", "b", "c"], num_workers=0))
    _, targets = next(iter(data.train_dataloader()))

    assert targets.dtype == torch.float32 and targets.ndim == 1
    train_rows = data.split_tables["train"]
    nearest = np.abs(targets.numpy()[:, None] - train_rows["price"].to_numpy()[None]).min(1)
    assert nearest.max() < 1e-4  # each target is a price of the table, unscaled
    assert data.num_outputs == 1 and data.target_names == ["price"] and data.class_names is None
    assert data.target_mean[0] == pytest.approx(train_rows["price"].mean(), rel=1e-5)
    # 20 % test, not the 29 % a "stratified" split over one-row classes gave
    assert len(data.split_tables["test"]) == 40


def test_several_regression_targets_come_as_one_row_of_values_each() -> None:
    data = fitted(DataFrameDataModule(table(), task="regression", label_column=["price", "weight"],
                                      feature_columns=["a", "b", "c"], num_workers=0))
    _, targets = next(iter(data.val_dataloader()))

    assert targets.shape[1] == 2 and targets.dtype == torch.float32
    assert data.num_outputs == 2 and data.num_features == 3


def test_regression_splits_are_stratified_by_quantiles_of_the_target() -> None:
    data = fitted(DataFrameDataModule(table(rows=500), task="regression", label_column="price",
                                      feature_columns=["a", "b", "c"], num_workers=0))
    everything = data.split_tables["train"]["price"]
    test = data.split_tables["test"]["price"]

    # every decile of the target is in the test split, about equally
    deciles = pd.qcut(pd.concat([everything, test]), 10, labels=False)
    assert deciles.iloc[len(everything):].value_counts().min() >= 8


def test_multilabel_columns_become_float_multi_hot_rows() -> None:
    data = fitted(DataFrameDataModule(table(), task="multilabel", label_column=["cat", "dog"],
                                      feature_columns=["a", "b", "c"], num_workers=0))
    features, targets = next(iter(data.train_dataloader()))

    assert targets.dtype == torch.float32 and targets.shape[1] == 2
    assert data.class_names == ["cat", "dog"] and data.num_classes == 2
    assert torch.equal(targets[:, 0], (features[:, 0] > -data.mean[0] / data.std[0]).float())


def test_multilabel_from_one_delimited_column() -> None:
    frame = table(rows=60)
    frame["tags"] = ["cat;dog", "dog", "", "cat"] * 15
    data = fitted(DataFrameDataModule(frame, task="multilabel", label_column="tags",
                                      label_delimiter=";", feature_columns=["a", "b"],
                                      num_workers=0, split_seed=1))
    rows = data.split_tables["val"]
    targets = data.datasets["val"].targets

    assert data.class_names == ["cat", "dog"]
    expected = [[float("cat" in str(t)), float("dog" in str(t))] for t in rows["tags"]]
    assert targets.tolist() == expected


@pytest.mark.parametrize(("task", "column", "message"), [
    ("multilabel", ["cat", "bad"], "label column 'bad' is 2, not 0 or 1"),
    ("regression", "price", "target 'price' is 'n/a', not a finite number"),
    ("regression", "empty", "no target in column 'empty'"),
])
def test_a_target_the_task_cannot_read_is_refused_naming_the_row(
        task: str, column: str | list[str], message: str) -> None:
    frame = table(rows=30)
    frame["bad"] = [0, 1] * 14 + [2, 0]
    frame["price"] = frame["price"].astype(object)
    frame.loc[7, "price"] = "n/a"
    frame["empty"] = np.nan
    data = DataFrameDataModule(frame, task=task, label_column=column, feature_columns=["a"])
    with pytest.raises(DataError, match="row") as error:
        data.setup("fit")
    assert message in str(error.value)


@pytest.mark.parametrize(("labels", "message"), [
    ([0.25 * i for i in range(40)], "holds non-integer numbers (e.g. 0.25)"),
    ([f"house {i}" for i in range(40)], "40 classes in 40 rows"),
    ([100 + (i * 7) % 501 for i in range(2000)],
     "holds 501 different integers from 100 to 600, not class ids"),
    ([(i * 37) % 61 - 30 for i in range(400)], "61 different integers from -30 to 30"),
])
def test_multiclass_refuses_a_continuous_label_column_naming_task_regression(
        labels: list[float], message: str) -> None:
    frame = table(rows=len(labels))
    frame["label"] = labels
    data = DataFrameDataModule(frame, feature_columns=["a"])
    with pytest.raises(DataError, match="task: regression") as error:
        data.setup("fit")
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("labels", [
    [i % 100 for i in range(1000)],              # ids 0..99
    [1 + i % 30 for i in range(600)],            # ids 1..30
    [(i % 40) * (1 + (i % 40 > 35)) for i in range(800)],  # ids 0..35 and a few up to 78
])
def test_integer_class_ids_are_classes(labels: list[int]) -> None:
    frame = table(rows=len(labels))
    frame["label"] = labels
    data = fitted(DataFrameDataModule(frame, feature_columns=["a"], num_workers=0))
    assert data.num_classes == len(set(labels))


def test_integers_that_are_not_ids_are_classes_when_class_names_say_so() -> None:
    frame = table(rows=2000)
    frame["label"] = [100 + (i * 7) % 40 * 10 for i in range(2000)]
    names = [str(v) for v in sorted(set(frame["label"]))]
    data = fitted(DataFrameDataModule(frame, feature_columns=["a"], class_names=names,
                                      num_workers=0))
    assert data.class_names == names


@pytest.mark.parametrize(("options", "message"), [
    ({"task": "multiclass", "label_column": ["cat", "dog"]}, "task: multilabel"),
    ({"task": "multilabel", "label_column": "cat"}, "label_delimiter"),
    ({"task": "segmentation", "mask_column": "mask"}, "class_names"),
    ({"task": "segmentation", "class_names": ["bg", "fg"]}, "mask_column"),
    ({"task": "regresion"}, "is not one of"),
])
def test_options_that_do_not_express_the_task_are_refused_in_one_line(
        options: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        DataFrameDataModule(table(rows=10), **options)


def test_a_split_column_without_training_rows_is_refused_in_one_line() -> None:
    frame = table(rows=60)
    frame["split"] = ["val"] * 40 + ["test"] * 20
    data = DataFrameDataModule(frame, task="regression", label_column="price",
                               split_column="split", feature_columns=["a"])
    with pytest.raises(DataError, match="no training rows: column 'split' has no 'train' row"):
        data.setup("fit")


@pytest.mark.parametrize(("weights", "message"), [
    ({3: np.nan}, "row 3: weight nan in column 'w' is not a finite number >= 0"),
    ({5: -1.0}, "row 5: weight -1.0 in column 'w'"),
    ({4: "heavy"}, "row 4: weight 'heavy' in column 'w'"),
    ("all", "every training row has weight 0 in column 'w'"),
])
def test_sampling_weights_that_are_not_finite_non_negative_numbers_are_refused_naming_the_row(
        weights: dict | str, message: str) -> None:
    frame = table(rows=40)
    frame["w"] = 0.0 if weights == "all" else 1.0
    if isinstance(weights, dict):
        frame["w"] = frame["w"].astype(object)
        for row, value in weights.items():
            frame.loc[row, "w"] = value
    data = DataFrameDataModule(frame, task="regression", label_column="price",
                               sampler="weighted", weight_column="w", feature_columns=["a"])
    with pytest.raises(DataError, match=message) as error:
        data.setup("fit")
    assert "\n" not in str(error.value)


def test_a_label_column_among_the_features_is_refused() -> None:
    with pytest.raises(DataError, match=r"label column\(s\) \['price'\]: the model would see"):
        DataFrameDataModule(table(), task="regression", label_column="price",
                            feature_columns=["a", "price"])


def test_labels_differing_only_by_surrounding_spaces_are_one_class() -> None:
    frame = table(rows=40)
    frame["label"] = ["cat", "dog", "cat ", " dog"] * 10
    data = fitted(DataFrameDataModule(frame, feature_columns=["a"], num_workers=0))
    assert data.class_names == ["cat", "dog"]


def test_a_label_delimiter_in_no_row_is_refused_naming_the_one_the_cells_hold() -> None:
    frame = table(rows=40)
    frame["tags"] = ["red,green", "red", "green,blue", "blue"] * 10
    data = DataFrameDataModule(frame, task="multilabel", label_column="tags",
                               label_delimiter=";", feature_columns=["a"])
    with pytest.raises(DataError, match=r"label_delimiter ';' is in no row of column 'tags', "
                                        r"whose cells hold ','.*set label_delimiter: ','"):
        data.setup("fit")


def test_task_none_yields_the_inputs_alone() -> None:
    data = fitted(DataFrameDataModule(table(), task="none", feature_columns=["a", "b", "c"],
                                      num_workers=0))
    batch = next(iter(data.train_dataloader()))

    assert isinstance(batch, torch.Tensor) and batch.shape[1] == 3
    assert data.class_names is None and data.num_outputs is None


def test_the_weighted_sampler_needs_weights_outside_multiclass() -> None:
    frame = table()
    with pytest.raises(DataError, match="weight_column"):  # before any file or run folder
        DataFrameDataModule(frame, task="regression", label_column="price", sampler="weighted",
                            feature_columns=["a"])
    frame["w"] = np.where(frame["cat"] == 1, 1.0, 0.0)
    data = fitted(DataFrameDataModule(frame, task="regression", label_column="price",
                                      sampler="weighted", weight_column="w",
                                      feature_columns=["a", "cat"], num_workers=0))
    drawn = torch.cat([x[:, 1] for x, _ in data.train_dataloader()])
    assert bool((drawn == drawn.max()).all())  # only rows with cat == 1 are drawn


def test_a_dataframe_predicts_a_table_with_the_training_statistics(tmp_path: Path) -> None:
    frame = table()
    data = fitted(DataFrameDataModule(frame, task="regression", label_column="price",
                                      num_workers=0))
    state = data.state_dict()
    frame.drop(columns=["price"]).to_csv(tmp_path / "new.csv", index=False)
    predict = DataFrameDataModule(frame, task="regression", label_column="price",
                                  predict_path=tmp_path / "new.csv", num_workers=0)
    predict.load_state_dict(state)
    batch = next(iter(predict.predict_dataloader()))

    columns = ["a", "b", "c", "weight", "cat", "dog"]
    assert state["feature_columns"] == columns
    expected = (frame[columns].to_numpy()[:1] - data.mean) / data.std
    assert torch.allclose(batch[:1], torch.as_tensor(expected, dtype=torch.float32), atol=1e-5)


# -- segmentation ----------------------------------------------------------------------------
def write_segmentation(root: Path, rows: int = 12, size: int = 8) -> Path:
    """Images with a bright left half, masks labelling that half 1."""
    (root / "img").mkdir(parents=True)
    entries = []
    for i in range(rows):
        image = np.zeros((size, size), dtype=np.uint8)
        mask = np.zeros((size, size), dtype=np.uint8)
        width = 1 + i % (size - 1)
        image[:, :width] = 200
        mask[:, :width] = 1
        Image.fromarray(image).save(root / "img" / f"{i}.png")
        Image.fromarray(mask).save(root / "img" / f"{i}_mask.png")
        entries.append((f"img/{i}.png", f"img/{i}_mask.png"))
    pd.DataFrame(entries, columns=["path", "mask"]).to_csv(root / "seg.csv", index=False)
    return root / "seg.csv"


def segmentation_data(annotations: Path, **options) -> ImageCSVDataModule:
    return ImageCSVDataModule(annotations, task="segmentation", mask_column="mask",
                              class_names=["background", "bright"], read_mode="GRAY",
                              num_workers=0, batch_size=4, **options)


def test_masks_reach_the_model_as_int64_and_move_with_their_image(tmp_path: Path) -> None:
    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.ToDtype(torch.float32, scale=True)])
    data = segmentation_data(write_segmentation(tmp_path), train_transforms=flip)
    data.setup("fit")
    images, masks = next(iter(data.train_dataloader()))

    assert masks.dtype == torch.int64 and masks.shape == (4, 8, 8)
    assert images.dtype == torch.float32
    assert torch.equal(masks, (images[:, 0] > 0.5).long())  # flipped together
    assert bool(masks[:, :, -1].all())  # the bright half is on the right now
    assert data.in_channels == 1 and data.num_classes == 2


@pytest.mark.parametrize(("fault", "message"), [
    ("size", "is 4x4 but its image"),
    ("value", "has value 5, outside the 2 classes"),
])
def test_a_mask_that_does_not_fit_is_refused_naming_the_file(
        tmp_path: Path, fault: str, message: str) -> None:
    annotations = write_segmentation(tmp_path)
    bad = np.full((4, 4) if fault == "size" else (8, 8), 5 if fault == "value" else 0,
                  dtype=np.uint8)
    Image.fromarray(bad).save(tmp_path / "img" / "3_mask.png")
    with pytest.raises(DataError, match="row 3") as error:
        segmentation_data(annotations).setup("fit")
    assert message in str(error.value) and "3_mask.png" in str(error.value)


def test_an_ignore_index_is_allowed_in_masks(tmp_path: Path) -> None:
    annotations = write_segmentation(tmp_path)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[0, 0] = 255
    Image.fromarray(mask).save(tmp_path / "img" / "3_mask.png")
    data = segmentation_data(annotations, ignore_index=255)
    data.setup("fit")
    assert len(data.datasets["train"]) + len(data.datasets["val"]) + len(data.datasets["test"]) \
        == 12
