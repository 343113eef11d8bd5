"""Tiny data for every task, made from scikit-learn's bundled sets, and the modules a user
would write for them (in the test's folder, with their own metric names, lazy layers and no
``test_step``)."""

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

TASKS = ("regression", "multilabel", "segmentation", "none")


def write_task_data(root: Path, task: str, digits_root: Path, rows: int = 240) -> str:
    """Data for ``task`` under ``root``; returns the ``data:`` section of a config for it.

    * regression: scikit-learn's diabetes table (10 features, disease progression 25-346);
    * multilabel: digit images tagged ``even`` and ``big`` (>= 5), one 0/1 column each;
    * segmentation: digit images whose stroke pixels are class ``small`` (0-4) or ``big``;
    * none: the digit images alone.
    """
    root.mkdir(parents=True, exist_ok=True)
    if task == "regression":
        from sklearn.datasets import load_diabetes

        frame = load_diabetes(as_frame=True, scaled=False).frame
        frame.to_csv(root / "diabetes.csv", index=False)
        return (f"data:\n  class_path: datamodules.dataframe.DataFrameDataModule\n"
                f"  init_args:\n    data: {root / 'diabetes.csv'}\n    task: regression\n"
                f"    label_column: target\n    batch_size: 32\n    num_workers: 0\n")
    labels = pd.read_csv(digits_root / "labels.csv").iloc[:rows]
    table = pd.DataFrame({"path": [str(digits_root / p) for p in labels["path"]]})
    extra = ""
    if task == "multilabel":
        table["even"] = (labels["label"] % 2 == 0).astype(int)
        table["big"] = (labels["label"] >= 5).astype(int)
        extra = "    label_column: [even, big]\n"
    elif task == "segmentation":
        (root / "masks").mkdir(exist_ok=True)
        masks = []
        for path, digit in zip(table["path"], labels["label"], strict=True):
            stroke = np.array(Image.open(path)) > 96
            mask = (stroke * (1 + int(digit >= 5))).astype(np.uint8)
            name = root / "masks" / Path(path).name
            Image.fromarray(mask).save(name)
            masks.append(str(name))
        table["mask"] = masks
        extra = "    mask_column: mask\n    class_names: [background, small, big]\n"
    table.to_csv(root / "images.csv", index=False)
    return (f"data:\n  class_path: datamodules.image_csv.ImageCSVDataModule\n  init_args:\n"
            f"    annotations: {root / 'images.csv'}\n    image_root: /\n    task: {task}\n"
            f"{extra}    read_mode: GRAY\n    batch_size: 16\n    num_workers: 0\n"
            f"    cache_images: true\n")


USER_MODULES = '''
import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import nn
from torchmetrics import MeanAbsoluteError
from torchmetrics.classification import MultilabelF1Score, MulticlassJaccardIndex


class Base(LightningModule):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class UserRegressor(Base):
    """Disease progression from 10 measurements; answers in the target's units."""
    def __init__(self, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.LazyLinear(32), nn.ReLU(), nn.Linear(32, 1))
        self.offset = nn.Parameter(torch.tensor(150.0))
        self.val_mae = MeanAbsoluteError()

    def forward(self, x):
        return self.net(x).squeeze(-1) * 50 + self.offset

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y) / 2500
        self.log("train_mse", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_mae(self(x), y)
        self.log("val_mae", self.val_mae)


class UserTagger(Base):
    def __init__(self, num_classes: int, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(64), nn.ReLU(),
                                 nn.Linear(64, num_classes))
        self.val_f1 = MultilabelF1Score(num_classes)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.binary_cross_entropy_with_logits(self(x), y)
        self.log("train_bce", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_f1(self(x), y.int())
        self.log("val_f1", self.val_f1)

    def predict_step(self, batch, batch_idx):
        return torch.sigmoid(self(batch))


class UserSegmenter(Base):
    def __init__(self, num_classes: int, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.LazyConv2d(16, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(16, num_classes, 1))
        self.val_iou = MulticlassJaccardIndex(num_classes)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_ce", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_iou(self(x).argmax(1), y)
        self.log("val_iou", self.val_iou)

    def predict_step(self, batch, batch_idx):
        return self(batch).argmax(1)


class UserAutoencoder(Base):
    """No targets: the batch is the images."""
    def __init__(self, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Flatten(), nn.LazyLinear(16), nn.ReLU())
        self.decoder = nn.Linear(16, 64)

    def forward(self, x):
        return self.decoder(self.encoder(x)).view(-1, 1, 8, 8)

    def training_step(self, batch, batch_idx):
        loss = F.mse_loss(self(batch), batch)
        self.log("train_recon", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_recon", F.mse_loss(self(batch), batch))
'''

USER_MODULE_FOR_TASK = {"regression": ("UserRegressor", "val_mae", "min"),
                        "multilabel": ("UserTagger", "val_f1", "max"),
                        "segmentation": ("UserSegmenter", "val_iou", "max"),
                        "none": ("UserAutoencoder", "val_recon", "min")}
