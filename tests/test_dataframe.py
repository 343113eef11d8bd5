"""The DataFrame datamodule: features standardised with training statistics only, images from
paths, bytes or arrays, and bad feature values reported by row."""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from datamodules.dataframe import DataFrameDataModule
from datamodules.validation import DataValidationError
from tests.conftest import log_lines


def frame_with_shifted_test_rows() -> pd.DataFrame:
    """Train rows around 0, test rows around 100: leaking test statistics would show."""
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": rng.normal(0, 1, 40), "y": rng.normal(5, 2, 40),
                          "label": ["p", "q"] * 20, "split": "train"})
    val = pd.DataFrame({"x": [0.0, 1.0], "y": [5.0, 6.0], "label": ["p", "q"], "split": "val"})
    test = pd.DataFrame({"x": rng.normal(100, 1, 10), "y": rng.normal(50, 2, 10),
                         "label": ["p", "q"] * 5, "split": "test"})
    return pd.concat([train, val, test], ignore_index=True)


def test_standardisation_statistics_come_from_the_training_split_only() -> None:
    frame = frame_with_shifted_test_rows()
    data = DataFrameDataModule(frame, split_column="split", num_workers=0)
    data.setup("fit")

    train = frame[frame.split == "train"]
    assert data.mean == pytest.approx(train[["x", "y"]].mean().to_numpy())
    assert data.std == pytest.approx(train[["x", "y"]].std(ddof=0).to_numpy())
    train_features = data.datasets["train"].features
    assert train_features.mean(0) == pytest.approx(torch.zeros(2), abs=1e-5)
    test_features = data.datasets["test"].features
    assert float(test_features[:, 0].mean()) > 50  # test rows scaled with train statistics
    state = data.state_dict()
    assert state["feature_columns"] == ["x", "y"]
    assert state["mean"] == pytest.approx(list(data.mean))


def test_csv_and_parquet_files_give_the_same_features(tmp_path: Path) -> None:
    frame = frame_with_shifted_test_rows()
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    loaded = []
    for name in ("d.csv", "d.parquet"):
        data = DataFrameDataModule(str(tmp_path / name), split_column="split", num_workers=0)
        data.setup("fit")
        loaded.append(data.datasets["train"].features)
    assert torch.allclose(loaded[0], loaded[1])


def test_nan_inf_and_text_features_are_reported_with_row_and_column() -> None:
    frame = pd.DataFrame({"x": [1.0, np.nan, 3.0, np.inf, 5.0, 6.0], "z": list("123a56"),
                          "label": [0, 1, 0, 1, 0, 1]})
    data = DataFrameDataModule(frame, feature_columns=["x", "z"], num_workers=0)
    with pytest.raises(DataValidationError) as error:
        data.setup("fit")
    message = str(error.value)
    assert message.startswith("DataFrame: 3 invalid row(s)")
    assert "row 1: feature 'x' is nan" in message
    assert "row 3: feature 'x' is inf" in message
    assert "row 3: feature 'z' is 'a'" in message


def test_a_numeric_column_with_a_stray_text_cell_is_refused_not_dropped(tmp_path: Path) -> None:
    """One '?' makes pandas read the column as text; feature_columns: null must not quietly
    train on one feature fewer. The bad cell is named; skip_invalid drops its row and keeps
    the column; a real text column is named as left out."""
    rows = 30
    frame = pd.DataFrame({"x": np.arange(rows, dtype=float), "z": [str(i) for i in range(rows)],
                          "note": ["ok", "bad"] * (rows // 2), "label": [0, 1] * (rows // 2)})
    frame.loc[7, "z"] = "?"  # pandas reads 'n/a' as NaN, but not '?'
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataValidationError) as error:
        DataFrameDataModule(str(tmp_path / "t.csv"), num_workers=0).setup("fit")
    assert "row 7: feature 'z' is '?', not a finite number" in str(error.value)

    data = DataFrameDataModule(str(tmp_path / "t.csv"), skip_invalid=True, num_workers=0)
    with log_lines() as lines:
        data.setup("fit")
    assert data.num_features == 2
    assert sum(len(d) for d in data.datasets.values()) == rows - 1
    assert any("left out as not numeric: ['note']" in line for line in lines)


def png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["paths", "bytes", "arrays"])
def test_image_column_holds_paths_bytes_or_arrays(tmp_path: Path, kind: str) -> None:
    values = [10 * i for i in range(10)]
    if kind == "paths":
        for i, v in enumerate(values):
            (tmp_path / f"{i}.png").write_bytes(png_bytes(v))
        cells = [f"{i}.png" for i in range(10)]
    elif kind == "bytes":
        cells = [png_bytes(v) for v in values]
    else:
        cells = [np.full((6, 6, 3), v, dtype=np.uint8) for v in values]
    frame = pd.DataFrame({"image": cells, "label": ["a", "b"] * 5, "split": ["train"] * 10})
    data = DataFrameDataModule(frame, image_column="image", image_root=tmp_path,
                               read_mode="GRAY", split_column="split", num_workers=0)
    data.setup("fit")
    dataset = data.datasets["train"]
    images = [dataset[i][0] for i in range(10)]
    assert all(img.shape == (1, 6, 6) and img.dtype == torch.float32 for img in images)
    means = [float(img.mean()) * 255 for img in images]
    assert all(abs(m - v) < 1.01 for m, v in zip(means, values, strict=True)), means  # RGB->gray
    assert [dataset[i][1].item() for i in range(10)] == [0, 1] * 5


def test_undecodable_bytes_in_the_image_column_are_reported_by_row() -> None:
    frame = pd.DataFrame({"image": [png_bytes(1), b"junk", png_bytes(3)], "label": [0, 1, 0]})
    data = DataFrameDataModule(frame, image_column="image", num_workers=0)
    with pytest.raises(DataValidationError, match="row 1: cannot read the image"):
        data.setup("fit")
