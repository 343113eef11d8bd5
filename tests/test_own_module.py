"""A user's own LightningModule, written outside the project the way a user would write it (its
own metric names, lazy layers, ``num_classes`` in ``__init__``, no ``test_step``, a
``predict_step`` that is a softmax), on their own CSV + image folder and on a table: it trains,
checkpoints, predicts and exports with the same commands as the template's own model."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import MY_MODULE, REPO, run_module_subprocess, run_train_subprocess


def test_the_readme_shows_this_module() -> None:
    assert MY_MODULE.strip() in (REPO / "README.md").read_text()


@pytest.fixture
def user_project(tmp_path: Path, digits_root: Path) -> Path:
    """A folder with the user's module (my_pkg.py) and a config for their CSV + image folder
    (here: the digits' labels.csv and PNGs, read as any image folder)."""
    (tmp_path / "my_pkg.py").write_text(MY_MODULE)
    (tmp_path / "my_data.yaml").write_text(
        "data:\n"
        "  class_path: datamodules.image_csv.ImageCSVDataModule\n"
        "  init_args:\n"
        f"    annotations: {digits_root / 'labels.csv'}\n"
        "    read_mode: GRAY\n"
        "    num_workers: 0\n"
        "trainer:\n"
        "  logger:\n"
        "    init_args:\n"
        f"      save_dir: {tmp_path / 'logs'}\n")
    return tmp_path


def train(project: Path, *args: str) -> tuple[int, str]:
    result = run_train_subprocess(
        ["--config", "my_data.yaml", "--model", "my_pkg.MyModule", "--max_epochs=2",
         "--trainer.limit_train_batches=10", "--trainer.enable_model_summary=false", *args],
        cwd=project, extra_path=project)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.slow
def test_a_monitor_the_module_does_not_log_costs_no_training_and_no_test_step_is_skipped(
    user_project: Path,
) -> None:
    code, output = train(user_project)

    assert code == 0, output[-4000:]
    notes = [line for line in output.splitlines() if "is not logged by MyModule" in line]
    assert len(notes) == 1 and "'val/loss'" in notes[0] and "val_acc" in notes[0], output
    assert "Testing skipped: MyModule has no test_step." in output
    assert "Run summary" in output and "Traceback" not in output
    (run,) = (user_project / "logs").glob("*/version_*")
    assert run.parent.name != "digits"  # the user's data does not log under the digits
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    assert json.loads((run / "summary.json").read_text())["global_step"] == 20
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["state_dict"]["net.1.weight"].shape == (32, 64)  # the lazy layer, 8x8 inputs
    assert state["hyper_parameters"]["num_classes"] == 10  # from the data, not a config
    assert "class_names" not in state["hyper_parameters"]  # MyModule does not take them


@pytest.mark.slow
def test_a_training_metric_can_be_the_monitor(user_project: Path) -> None:
    code, output = train(user_project, "--checkpoint.monitor=train_loss", "--checkpoint.mode=min")
    assert code == 0, output[-4000:]
    assert "is not logged by" not in output
    (run,) = (user_project / "logs").glob("*/version_*")
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(names) == 2 and names[0].startswith("epoch") and "train_loss" in names[0]


@pytest.mark.slow
def test_the_modules_own_metric_names_the_best_checkpoint_which_predicts_and_exports(
    user_project: Path, digits_root: Path
) -> None:
    code, output = train(user_project, "--checkpoint.monitor=val_acc", "--checkpoint.mode=max",
                         "--model.lr=0.01", "--trainer.limit_train_batches=20")
    assert code == 0, output[-4000:]
    (run,) = (user_project / "logs").glob("*/version_*")
    summary = json.loads((run / "summary.json").read_text())
    best = Path(summary["best_checkpoint"])
    assert best.name == f"epoch{summary['best_epoch']:02d}-val_acc{summary['best_score']:.4f}.ckpt"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(
        [best.name, "last.ckpt"])

    # predict, on a machine without the training table: the classes come from the checkpoint,
    # predict_step's probabilities are written as they are.
    images = user_project / "to_predict"
    images.mkdir()
    for png in sorted((digits_root / "images").glob("*.png"))[:7]:
        (images / png.name).write_bytes(png.read_bytes())
    result = run_train_subprocess(
        ["predict", "--config", "my_data.yaml", "--model", "my_pkg.MyModule",
         f"--ckpt_path={best}", f"--data.init_args.predict_path={images}",
         "--data.init_args.annotations=/not/on/this/machine/labels.csv"],
        cwd=user_project, extra_path=user_project)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    table = pd.read_csv(run / "predictions.csv")
    assert len(table) == 7 and list(table.columns[:2]) == ["path", "label"]
    probabilities = table[[f"prob_{digit}" for digit in range(10)]].to_numpy()
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-4
    labels = pd.read_csv(digits_root / "labels.csv").set_index("path")["label"]
    truth = [labels[f"images/{Path(p).name}"] for p in table["path"]]
    assert (table["label"].to_numpy() == truth).mean() > 0.5  # it learned something

    # export: the class comes from the checkpoint, once its package is trusted (--trust);
    # untrusted, or where it cannot be imported, one line.
    untrusted = run_module_subprocess("models.export", [f"--ckpt_path={best}"],
                                      cwd=user_project, extra_path=user_project)
    assert untrusted.returncode == 1
    (line,) = untrusted.stderr.strip().splitlines()
    assert line.startswith(f"export: error: {best}: refused, it names the class "
                           "'my_pkg.MyModule'") and line.endswith("pass --trust my_pkg")
    assert not list(user_project.glob("**/*.onnx"))
    exported = run_module_subprocess("models.export", [f"--ckpt_path={best}", "--format=onnx",
                                                       "--trust=my_pkg"],
                                     cwd=user_project, extra_path=user_project)
    assert exported.returncode == 0, exported.stderr[-3000:]
    meta = json.loads(best.with_suffix(".onnx.json").read_text())
    assert meta["model_class"] == "my_pkg.MyModule" and meta["input_shape"] == [1, 8, 8]
    elsewhere = user_project / "elsewhere"
    elsewhere.mkdir()
    refused = run_module_subprocess("models.export", [f"--ckpt_path={best}", "--trust=my_pkg"],
                                    cwd=elsewhere)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"export: error: {best}: cannot import the model class my_pkg.MyModule (No module "
        "named 'my_pkg'); run the export where that class is importable"]


@pytest.mark.slow
def test_a_table_config_needs_no_feature_or_class_count(tmp_path: Path) -> None:
    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True).frame.rename(columns={"target": "label"})
    wine.to_csv(tmp_path / "wine.csv", index=False)
    (tmp_path / "wine.yaml").write_text(
        "data:\n"
        "  class_path: datamodules.dataframe.DataFrameDataModule\n"
        "  init_args: {data: wine.csv, batch_size: 32, num_workers: 0}\n"
        "model:\n"
        "  class_path: models.classifier.ImageClassifier\n"
        "  init_args:\n"
        "    backbone: {class_path: models.mlp.MLP, init_args: {hidden: [32]}}\n")
    result = run_train_subprocess(["--config", "wine.yaml", "--max_epochs=20",
                                   "--trainer.enable_model_summary=false"], cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    (run,) = (tmp_path / "logs").glob("*/version_*")
    last = run / "checkpoints" / "last.ckpt"
    hparams = torch.load(last, weights_only=True)["hyper_parameters"]
    assert (hparams["in_features"], hparams["num_classes"]) == (13, 3)  # from the table

    exported = run_module_subprocess("models.export", [f"--ckpt_path={last}"], cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    meta = json.loads(last.with_suffix(".onnx.json").read_text())
    assert meta["input_shape"] == [13] and len(meta["feature_columns"]) == 13
    assert meta["class_names"] == ["0", "1", "2"] and len(meta["mean"]) == 13
    assert json.loads((run / "summary.json").read_text())["metrics"]["test/acc"] > 0.85


# A user's own datamodule too (no table, not the template's base class) and a module whose
# first layer is lazy: DistributedDataParallel refuses parameters without a shape.
OWN_DATA_AND_LAZY_MODULE = '''
import torch
import torch.nn.functional as F
from lightning import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Points(LightningDataModule):
    def setup(self, stage):
        x = torch.randn(256, 5, generator=torch.Generator().manual_seed(0))
        self.points = TensorDataset(x, (x.sum(dim=1) > 0).long())

    def train_dataloader(self):
        return DataLoader(self.points, batch_size=32)


class LazyNet(LightningModule):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("fit_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class WithUnreachedLazy(LazyNet):
    def __init__(self, hidden: int = 16):
        super().__init__(hidden)
        self.aux = nn.LazyLinear(1)  # called by training_step only, never by forward

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) + 0 * self.aux(batch[0]).mean()
'''


def fit_points_on_two_ranks(folder: Path, model: str) -> subprocess.CompletedProcess[str]:
    """``train.py`` on 2 DDP ranks with the user's own datamodule and ``model`` (points.py)."""
    (folder / "points.py").write_text(OWN_DATA_AND_LAZY_MODULE)
    return run_train_subprocess(
        ["--data", "points.Points", "--model", f"points.{model}", "--devices", "2",
         "--max_epochs", "1", "--checkpoint.monitor", "fit_loss",
         f"--trainer.logger.init_args.save_dir={folder / 'logs'}"],
        cwd=folder, extra_path=folder, timeout=240)


@pytest.mark.slow
@pytest.mark.ddp
def test_lazy_layers_get_their_shapes_from_a_users_own_datamodule_before_ddp(
        tmp_path: Path) -> None:
    result = fit_points_on_two_ranks(tmp_path, "LazyNet")
    assert result.returncode == 0, result.stderr[-3000:]
    (last,) = (tmp_path / "logs").rglob("last.ckpt")
    weights = torch.load(last, weights_only=True)["state_dict"]
    assert weights["net.0.weight"].shape == (16, 5)


@pytest.mark.slow
@pytest.mark.ddp
def test_a_lazy_layer_forward_does_not_reach_stops_ddp_in_one_line_naming_it(
        tmp_path: Path) -> None:
    result = fit_points_on_two_ranks(tmp_path, "WithUnreachedLazy")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "aux.weight, aux.bias still have no shape" in result.stderr
