"""What a user sees of every task's outputs: the predictions CSV and its per-input files, the
TensorBoard pictures, and the export metadata, with tiny modules and data made here (in-process,
no train.py)."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from callbacks.prediction_writer import PredictionCSVWriter
from callbacks.tensorboard_images import TensorBoardImages
from errors import DataError
from models import export
from tests.conftest import log_lines, read_events

QUIET = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
         "enable_model_summary": False, "enable_checkpointing": False}


# -- predictions ------------------------------------------------------------------------------
class Returns(LightningModule):
    """A module whose predict_step returns ``make(batch)``; ``hparams`` as a checkpoint would
    hold them."""

    def __init__(self, make: Callable[[Tensor], Any], **hparams: Any) -> None:
        super().__init__()
        self.make = make
        self.hparams.update(hparams)

    def predict_step(self, batch: Tensor, batch_idx: int) -> Any:
        return self.make(batch)


class Files(Dataset):
    """Inputs with the image files they came from (``paths``), as the image datamodules give."""

    def __init__(self, inputs: Tensor) -> None:
        self.inputs = inputs
        self.paths = [f"/data/img_{i}.png" for i in range(len(inputs))]

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> Tensor:
        return self.inputs[index]


class Data(LightningDataModule):
    """A datamodule stating its task and output names, predicting ``dataset``."""

    def __init__(self, dataset: Dataset, task: str | None = None,
                 class_names: list[str] | None = None,
                 target_names: list[str] | None = None) -> None:
        super().__init__()
        self.dataset, self.task = dataset, task
        self.class_names, self.target_names = class_names, target_names
        self.output_names = target_names if task == "regression" else class_names

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=4)


class Rows(Dataset):
    """Table rows: no files."""

    def __init__(self, inputs: Tensor) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> Tensor:
        return self.inputs[index]


def predict(tmp_path: Path, module: LightningModule, data: Data,
            **writer_args: Any) -> tuple[pd.DataFrame, PredictionCSVWriter]:
    writer = PredictionCSVWriter(tmp_path / "out" / "preds.csv", **writer_args)
    Trainer(logger=False, callbacks=[writer], **QUIET).predict(module, datamodule=data,
                                                               return_predictions=False)
    return pd.read_csv(writer.target, keep_default_na=False), writer


def test_a_1d_output_is_one_column_with_its_values_unchanged(tmp_path: Path) -> None:
    prices = torch.tensor([250.5, 12.25, -3.0, 0.5, 1e6, 7.0])
    module = Returns(lambda batch: batch[:, 0])
    table, writer = predict(tmp_path, module, Data(Rows(prices[:, None]), task="regression",
                                                   target_names=["price"]))
    assert list(table.columns) == ["row", "price"]  # a table has no paths: its row index
    assert list(table["row"]) == list(range(6))
    np.testing.assert_array_equal(table["price"].to_numpy(), prices.numpy())  # no softmax
    assert writer.written == f"Predictions: 6 rows written to {writer.target}"

    unnamed, _ = predict(tmp_path, module, Data(Rows(prices[:, None])))
    assert list(unnamed.columns) == ["row", "prediction"]
    assert unnamed["prediction"][0] == 250.5


def test_a_2d_output_gets_a_column_per_output_name(tmp_path: Path) -> None:
    values = torch.tensor([[250.5, -1.5], [3.0, 400.0], [0.0, 2.5]])
    module = Returns(lambda batch: batch)
    table, _ = predict(tmp_path, module, Data(Rows(values), task="regression",
                                              target_names=["price", "rooms"]))
    assert list(table.columns) == ["row", "price", "rooms"]
    np.testing.assert_array_equal(table[["price", "rooms"]].to_numpy(), values.numpy())
    # Names that do not match the width are not used.
    table, _ = predict(tmp_path, module, Data(Rows(values), task="regression",
                                              target_names=["price"]))
    assert list(table.columns) == ["row", "output_0", "output_1"]


def test_multiclass_probabilities_get_the_class_name_of_the_largest(tmp_path: Path) -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    module = Returns(lambda batch: batch, task="multiclass", class_names=["cat", "dog", "owl"])
    table, _ = predict(tmp_path, module, Data(Files(probs)))
    assert list(table.columns) == ["path", "label", "prob_cat", "prob_dog", "prob_owl"]
    assert list(table["path"]) == ["/data/img_0.png", "/data/img_1.png", "/data/img_2.png"]
    assert list(table["label"]) == ["cat", "owl", "dog"]
    np.testing.assert_allclose(table.filter(like="prob_").to_numpy(), probs.numpy())


def test_multiclass_logits_are_written_as_they_are_with_a_warning(tmp_path: Path) -> None:
    logits = torch.tensor([[2.0, -1.0], [-3.0, 4.0]])
    module = Returns(lambda batch: batch, task="multiclass", class_names=["no", "yes"])
    with pytest.warns(UserWarning, match=r"not probabilities \(values outside \[0, 1\]\)"):
        table, _ = predict(tmp_path, module, Data(Files(logits)))
    np.testing.assert_array_equal(table[["prob_no", "prob_yes"]].to_numpy(), logits.numpy())
    assert list(table["label"]) == ["no", "yes"]


def test_multilabel_lists_the_labels_over_the_threshold(tmp_path: Path) -> None:
    probs = torch.tensor([[0.9, 0.35, 0.1], [0.2, 0.1, 0.05], [0.3, 0.6, 0.95]])
    data = Data(Files(probs), task="multilabel", class_names=["even", "big", "round"])
    table, _ = predict(tmp_path, Returns(lambda batch: batch), data, threshold=0.3)
    assert list(table.columns) == ["path", "labels", "prob_even", "prob_big", "prob_round"]
    assert list(table["labels"]) == ["even;big", "", "even;big;round"]
    np.testing.assert_allclose(table.filter(like="prob_").to_numpy(), probs.numpy())


def test_a_dict_output_gives_a_column_per_key(tmp_path: Path) -> None:
    inputs = torch.arange(15, dtype=torch.float32).view(5, 3)
    module = Returns(lambda batch: {"score": batch[:, 0] * 100, "embedding": batch})
    table, _ = predict(tmp_path, module, Data(Rows(inputs)))
    assert list(table.columns) == ["row", "score", "embedding_0", "embedding_1", "embedding_2"]
    np.testing.assert_array_equal(table["score"].to_numpy(), inputs[:, 0].numpy() * 100)
    np.testing.assert_array_equal(table.filter(like="embedding_").to_numpy(), inputs.numpy())


def test_masks_are_png_files_equal_to_the_predicted_masks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    images = torch.randn(6, 1, 5, 7)
    masks = torch.randint(0, 3, (6, 5, 7))

    class Segment(LightningModule):
        def predict_step(self, batch: Tensor, batch_idx: int) -> Tensor:
            return masks[batch_idx * 4: batch_idx * 4 + len(batch)]  # int64 (N, H, W)

    data = Data(Files(images), task="segmentation", class_names=["bg", "a", "b"])
    table, writer = predict(tmp_path, Segment(), data)
    assert list(table.columns) == ["path", "mask"]
    assert list(table["mask"]) == [f"preds/{i:06d}_img_{i}.png" for i in range(6)]
    for i, name in enumerate(table["mask"]):
        with Image.open(writer.target.parent / name) as png:
            assert png.mode == "L"  # 8-bit: every class below 256
            np.testing.assert_array_equal(np.array(png), masks[i].numpy())
    assert "one file per input in" in writer.written


def test_integer_maps_of_256_values_or_more_are_16_bit_pngs(tmp_path: Path) -> None:
    counts = torch.tensor([[[0, 300], [65535, 7]], [[1, 2], [3, 4000]]])
    table, writer = predict(tmp_path, Returns(lambda batch: counts),
                            Data(Rows(torch.zeros(2, 1))))
    assert list(table.columns) == ["row", "output_file"]
    for i, name in enumerate(table["output_file"]):
        with Image.open(writer.target.parent / name) as png:
            np.testing.assert_array_equal(np.array(png), counts[i].numpy())


def test_embedding_maps_are_npy_files_that_load_back_equal(tmp_path: Path) -> None:
    torch.manual_seed(0)
    maps = torch.randn(5, 8, 4, 4)
    module = Returns(lambda batch: {"features": maps[batch[:, 0].long()],
                                    "norm": maps[batch[:, 0].long()].flatten(1).norm(dim=1)})
    table, writer = predict(tmp_path, module, Data(Rows(torch.arange(5.0)[:, None])))
    assert list(table.columns) == ["row", "features", "norm"]
    for i, name in enumerate(table["features"]):
        assert name == f"preds/features/{i:06d}.npy"
        np.testing.assert_array_equal(np.load(writer.target.parent / name), maps[i].numpy())
    np.testing.assert_allclose(table["norm"].to_numpy(), maps.flatten(1).norm(dim=1).numpy(),
                               rtol=1e-6)


def test_an_output_without_one_entry_per_input_stops_predict_in_one_line(
    tmp_path: Path
) -> None:
    with pytest.raises(DataError, match=r"returned list for a batch of 4; the CSV needs"):
        predict(tmp_path, Returns(lambda batch: batch.tolist()), Data(Rows(torch.zeros(4, 2))))
    with pytest.raises(DataError, match=r"returned \['x'\] shape \(1,\) for a batch of 4"):
        predict(tmp_path, Returns(lambda batch: {"x": batch[:1, 0]}),
                Data(Rows(torch.zeros(4, 2))))


# -- TensorBoard pictures ---------------------------------------------------------------------
class Task(LightningModule):
    """A tiny network for ``task``; validation_step returns what ``returns`` says."""

    def __init__(self, task: str, outputs: int, returns: str = "task") -> None:
        super().__init__()
        self.hparams.update(task=task)
        self.task, self.returns = task, returns
        self.net = (nn.Conv2d(1, outputs, 3, padding=1) if task == "segmentation"
                    else nn.Sequential(nn.Flatten(), nn.Linear(64, outputs)))
        self.forward_calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.forward_calls += 1
        out = self.net(x)
        return out.squeeze(-1) if self.task == "regression" and out.shape[-1] == 1 else out

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        if self.task in ("multiclass", "segmentation"):
            return F.cross_entropy(out, y)
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(out, y)
        return F.mse_loss(out, y)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return self.loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        out = self(x)
        self.log("val_loss", self.loss(out, y))
        if self.returns == "none":
            return None
        return out.argmax(1) if self.task == "segmentation" else out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def targets_for(task: str, n: int) -> Tensor:
    generator = torch.Generator().manual_seed(1)
    if task == "multiclass":
        return torch.arange(n) % 3
    if task == "multilabel":
        return torch.randint(0, 2, (n, 3), generator=generator).float()
    if task == "regression":
        return torch.randn(n, generator=generator) * 50 + 200
    return torch.randint(0, 3, (n, 8, 8), generator=generator)


def fit(tmp_path: Path, module: LightningModule, targets: Tensor) -> tuple[Any, list[str]]:
    """Two epochs of 3 + 3 batches with TensorBoardImages; the events and its lines."""
    torch.manual_seed(0)
    images = torch.randn(len(targets), 1, 8, 8)
    data = DataLoader(TensorDataset(images, targets), batch_size=8)
    with log_lines("lightning.pytorch.utilities.rank_zero") as lines:
        trainer = Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=3,
                          logger=TensorBoardLogger(tmp_path, name="run"),
                          callbacks=[TensorBoardImages(worst_k=4)], **QUIET)
        trainer.fit(module, data, data)
    assert trainer.current_epoch == 2  # the run went on, whatever the pictures did
    return read_events(Path(trainer.logger.log_dir)), [
        line for line in lines if line.startswith("TensorBoardImages")]


@pytest.mark.parametrize(("task", "outputs", "picture"), [
    ("regression", 1, "images/val_scatter"),
    ("segmentation", 3, "images/val_masks"),
    ("multilabel", 3, "images/val_precision_recall"),
    ("multiclass", 3, "images/val_confusion_matrix"),
])
def test_each_task_gets_its_validation_picture_without_a_second_forward(
    tmp_path: Path, task: str, outputs: int, picture: str
) -> None:
    module = Task(task, outputs)
    events, lines = fit(tmp_path, module, targets_for(task, 48))
    assert lines == []
    tags = events.Tags()["images"]
    assert picture in tags and "images/train_batch" in tags
    assert [image.step for image in events.Images(picture)] == [3, 6]  # once per epoch
    others = {"images/val_scatter", "images/val_masks", "images/val_precision_recall",
              "images/val_confusion_matrix"} - {picture}
    assert not others & set(tags)
    # Sanity check (2) + training (2 x 3) + validation (2 x 3): validation_step's own calls.
    assert module.forward_calls == 2 + 6 + 6


def test_a_validation_step_returning_nothing_costs_one_line_and_no_forward(
    tmp_path: Path
) -> None:
    module = Task("regression", 1, returns="none")
    events, lines = fit(tmp_path, module, targets_for("regression", 48))
    (line,) = lines  # once, though 6 validation batches ran
    assert line.startswith("TensorBoardImages: no predicted-vs-true scatter (regression): "
                           "validation_step must return the predictions, shaped like the")
    assert "Task's returned NoneType" in line and "\n" not in line
    assert module.forward_calls == 2 + 6 + 6  # no forward pass of the callback's own
    assert "images/val_scatter" not in events.Tags()["images"]


def test_targets_the_logits_cannot_hold_never_stop_the_run(tmp_path: Path) -> None:
    # Two labels packed into one column: class numbers beyond the 3 the head has.
    packed = torch.arange(48) % 12
    module = Task("multiclass", 3)
    module.loss = lambda out, y: F.cross_entropy(out, y % 3)  # type: ignore[method-assign]
    events, lines = fit(tmp_path / "packed", module, packed)
    assert lines == []
    assert "images/val_confusion_matrix" in events.Tags()["images"]
    # Two label columns under multiclass: (N, 2) targets do not fit (N, C) logits.
    module = Task("multiclass", 3)
    module.loss = lambda out, y: F.cross_entropy(out, y[:, 0])  # type: ignore[method-assign]
    events, lines = fit(tmp_path / "two", module, torch.stack([packed % 3, packed // 3], 1))
    (line,) = lines
    assert "validation_step must return (N, C) logits for the (N,) class targets" in line
    assert "targets a int64 tensor of shape (8, 2)" in line
    assert "images/val_confusion_matrix" not in events.Tags()["images"]


# -- export metadata --------------------------------------------------------------------------
class TableRegressor(LightningModule):
    """A regression model on a table of 30 features, one value in the target's units."""

    def __init__(self, task: str = "regression", target_names: list[str] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(30, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1) * 100 + 250


class Autoencoder(LightningModule):
    """No task, no classes: images in, images out."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def checkpoint_of(module: LightningModule, path: Path, **extra: Any) -> Path:
    """What train.py saves, for the fields export reads."""
    torch.save({"state_dict": module.state_dict(),
                "hyper_parameters": {**module.hparams,
                                     "_class_path": f"{__name__}.{type(module).__name__}"},
                "pytorch-lightning_version": lightning.__version__, **extra}, path)
    return path


def test_export_of_a_table_regressor_says_regression_and_takes_a_1d_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = checkpoint_of(TableRegressor(target_names=["price"]), tmp_path / "reg.ckpt")
    model_file = tmp_path / "reg.pt"
    # The module is the test's own (tests.test_task_outputs): trusted by saying so.
    assert export.main(["--trust=tests", "--ckpt_path", str(ckpt), "--format", "torchscript",
                        "--output", str(model_file), "--input_shape", "30"]) == 0
    out = capsys.readouterr().out
    assert "output N (task regression: price)" in out and "classes" not in out
    meta = json.loads((tmp_path / "reg.pt.json").read_text())
    assert meta["task"] == "regression" and meta["output_names"] == ["price"]
    assert meta["input_shape"] == [30] and meta["input_name"] == "features"
    assert meta["output_shape"] == [] and meta["output_name"] == "predictions"
    assert "targets' units" in meta["output"] and "class_names" not in meta
    assert meta["parity"]["max_abs_diff"] <= meta["parity"]["tolerance"]


def test_export_of_an_autoencoder_claims_no_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = checkpoint_of(Autoencoder(), tmp_path / "ae.ckpt",
                         preprocessing={"input_shape": [1, 8, 8], "read_mode": "GRAY"})
    model_file = tmp_path / "ae.pt"
    # The module is the test's own (tests.test_task_outputs): trusted by saying so.
    assert export.main(["--trust=tests", "--ckpt_path", str(ckpt), "--format", "torchscript",
                        "--output", str(model_file)]) == 0
    assert "output Nx1x8x8 (task unknown)" in capsys.readouterr().out
    meta = json.loads((tmp_path / "ae.pt.json").read_text())
    assert meta["task"] == "unknown" and meta["output_names"] is None
    assert meta["output_shape"] == [1, 8, 8] and meta["output_name"] == "outputs"
    assert meta["output"] == "the model's forward output, shape (N, 1, 8, 8)"
    assert "class_names" not in meta
    assert meta["parity"]["max_abs_diff"] <= 1e-4


def test_export_does_not_call_an_autoencoder_a_classifier_whatever_its_data_said(
    tmp_path: Path
) -> None:
    # Trained on a datamodule left at its default task: the output shows otherwise.
    ckpt = checkpoint_of(Autoencoder(), tmp_path / "ae.ckpt",
                         datamodule_hyper_parameters={"_class_path": "x.Images",
                                                      "task": "multiclass"},
                         Images={"class_names": ["a", "b"]})
    _, meta = export.export(ckpt, "torchscript", tmp_path / "ae.pt", input_shape=[1, 8, 8],
                            trust=["tests"])
    assert meta["task"] == "multiclass" and "class_names" not in meta
    assert meta["output"].startswith("the model's forward output, shape (N, 1, 8, 8) (the "
                                     "checkpoint's task is multiclass, but this is not")
