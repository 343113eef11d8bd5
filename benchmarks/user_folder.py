"""A user's own image folder through the template against the in-memory peer, side by side:
5,000 28x28 grayscale PNGs + a CSV, lightning-hydra-template's MNIST module, batch 128, 5 epochs.

    python benchmarks/user_folder.py [--rounds 4] [--threads 2] [--epochs 5]

- template: ``train.py --config user.yaml`` as the README's "Your own data" section writes it
  (an ImageCSVDataModule on the CSV + folder, per-image ``ToDtype`` + ``Normalize``), fit then
  test, with every default callback, logger and checkpoint.
- peer: what lightning-hydra-template does: a plain LightningDataModule holding the same images
  as one uint8 tensor in memory (loaded from a ``.pt`` file, as torchvision's MNIST is), the same
  per-image transforms, the same module, ``Trainer`` fit then test.
- template, num_workers 2: the template with a loader worker per CPU, what ``num_workers:
  null`` chose before it used none for samples ready in memory (what that default earns).

The images are scikit-learn's 1,797 real 8x8 digits, upscaled to 28x28 and shifted by up to 2
pixels into 5,000 distinct files (no download: MNIST itself would need one). The module is
lightning-hydra-template's ``MNISTLitModule`` with its ``SimpleDenseNet`` (784-64-128-64-10,
BatchNorm), Adam lr 0.001 + ReduceLROnPlateau, torchmetrics accuracy, copied below.

Each run is its own process; rounds alternate the order. Reported: whole-process wall time,
the time from the process start to the model built (imports, parse, the template's data
check and cache), to fit start and to the first training step, and the median epoch; the
ratio is the median of the per-round ratios.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification.accuracy import Accuracy

REPO = Path(__file__).resolve().parents[1]
IMAGES, SIZE, BATCH, EPOCHS = 5000, 28, 128, 5
TRAIN, VAL = 3500, 500
MEAN, STD = 0.1307, 0.3081

USER_CONFIG = """\
model:
  class_path: user_folder.MNISTLitModule
data:
  class_path: datamodules.image_csv.ImageCSVDataModule
  init_args:
    annotations: {csv}
    split_column: split
    read_mode: GRAY
    batch_size: {batch}
    train_transforms: &per_image
      class_path: torchvision.transforms.v2.Compose
      init_args:
        transforms:
          - class_path: torchvision.transforms.v2.ToDtype
            init_args: {{dtype: torch.float32, scale: true}}
          - class_path: torchvision.transforms.v2.Normalize
            init_args: {{mean: [{mean}], std: [{std}]}}
    eval_transforms: *per_image
checkpoint:
  monitor: val/acc
  mode: max
trainer:
  max_epochs: {epochs}
  enable_progress_bar: false
"""


# -- lightning-hydra-template's MNIST module (src/models/mnist_module.py, components) ---------
class SimpleDenseNet(nn.Module):
    def __init__(self, input_size: int = 784, lin1_size: int = 64, lin2_size: int = 128,
                 lin3_size: int = 64, output_size: int = 10) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(input_size, lin1_size), nn.BatchNorm1d(lin1_size), nn.ReLU(),
            nn.Linear(lin1_size, lin2_size), nn.BatchNorm1d(lin2_size), nn.ReLU(),
            nn.Linear(lin2_size, lin3_size), nn.BatchNorm1d(lin3_size), nn.ReLU(),
            nn.Linear(lin3_size, output_size))

    def forward(self, x):
        batch_size, _, _, _ = x.size()
        return self.model(x.view(batch_size, -1))


class MNISTLitModule(LightningModule):
    def __init__(self, lr: float = 0.001) -> None:
        super().__init__()
        self.built = time.time()  # the benchmark's clock: imports, parse (and data check) done
        self.save_hyperparameters()
        self.net = SimpleDenseNet()
        self.criterion = torch.nn.CrossEntropyLoss()
        self.train_acc = Accuracy(task="multiclass", num_classes=10)
        self.val_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc = Accuracy(task="multiclass", num_classes=10)
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    def forward(self, x):
        return self.net(x)

    def on_train_start(self) -> None:
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()

    def model_step(self, batch):
        x, y = batch
        logits = self.forward(x)
        loss = self.criterion(logits, y)
        return loss, torch.argmax(logits, dim=1), y

    def training_step(self, batch, batch_idx):
        loss, preds, targets = self.model_step(batch)
        self.train_loss(loss)
        self.train_acc(preds, targets)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, preds, targets = self.model_step(batch)
        self.val_loss(loss)
        self.val_acc(preds, targets)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch, batch_idx):
        loss, preds, targets = self.model_step(batch)
        self.test_loss(loss)
        self.test_acc(preds, targets)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.trainer.model.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min",
                                                               factor=0.1, patience=10)
        return {"optimizer": optimizer, "lr_scheduler": {
            "scheduler": scheduler, "monitor": "val/loss", "interval": "epoch", "frequency": 1}}

    # The benchmark's clock (both variants): when fit starts (data set up) and the first step
    # starts, each epoch's time.
    def on_fit_start(self) -> None:
        self.fit_start = time.time()

    def on_train_batch_start(self, batch, batch_idx):
        if not hasattr(self, "first_step"):
            self.first_step = time.time()

    def on_train_epoch_start(self) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        self.epochs = [*getattr(self, "epochs", []), time.perf_counter() - self.epoch_start]

    def on_fit_end(self) -> None:
        if os.environ.get("BENCH_OUT") and self.trainer.is_global_zero:
            Path(os.environ["BENCH_OUT"]).write_text(json.dumps(
                {"built": self.built, "fit_start": self.fit_start,
                 "first_step": self.first_step, "epochs": self.epochs}))


# -- the peer: images as tensors in memory -----------------------------------------------------
def peer_run(tensors: Path, epochs: int) -> None:
    from lightning.pytorch import LightningDataModule, Trainer, seed_everything
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    class InMemory(Dataset):
        def __init__(self, images, labels, transform) -> None:
            self.images, self.labels, self.transform = images, labels, transform

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, index):
            return self.transform(self.images[index]), int(self.labels[index])

    class Data(LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.transform = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                                         v2.Normalize([MEAN], [STD])])

        def setup(self, stage: str) -> None:
            images, labels = torch.load(tensors)
            cut = {"train": slice(0, TRAIN), "val": slice(TRAIN, TRAIN + VAL),
                   "test": slice(TRAIN + VAL, None)}
            self.sets = {k: InMemory(images[s], labels[s], self.transform) for k, s in cut.items()}

        def train_dataloader(self):
            return DataLoader(self.sets["train"], batch_size=BATCH, shuffle=True)

        def val_dataloader(self):
            return DataLoader(self.sets["val"], batch_size=BATCH)

        def test_dataloader(self):
            return DataLoader(self.sets["test"], batch_size=BATCH)

    seed_everything(0)
    data, model = Data(), MNISTLitModule()
    trainer = Trainer(max_epochs=epochs, enable_progress_bar=False,
                      default_root_dir=str(tensors.parent / "peer_logs"))
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, ckpt_path="best")


# -- the data and the rounds -------------------------------------------------------------------
def make_folder(root: Path) -> tuple[Path, Path]:
    """5,000 28x28 PNGs from the real 8x8 digits (upscaled, shifted), a CSV with a split
    column, and the same images as one tensor file for the peer."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_digits
    from torchvision.io import write_png
    from torchvision.transforms.v2 import functional as TF

    digits = load_digits()
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, rows = [], []
    for i in range(IMAGES):
        k = i % len(digits.images)
        small = torch.from_numpy(digits.images[k] * 255 / 16).to(torch.uint8)[None]
        big = TF.resize(small, [24, 24], antialias=True)
        dx, dy = rng.integers(0, 5, size=2)
        image = torch.zeros((1, SIZE, SIZE), dtype=torch.uint8)
        image[:, dy:dy + 24, dx:dx + 24] = big
        write_png(image, str(root / "images" / f"{i:05d}.png"))
        images.append(image)
        split = "train" if i < TRAIN else "val" if i < TRAIN + VAL else "test"
        rows.append({"path": f"images/{i:05d}.png", "label": int(digits.target[k]),
                     "split": split})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    labels = torch.tensor([r["label"] for r in rows])
    torch.save((torch.stack(images), labels), root / "images.pt")
    return root / "labels.csv", root / "images.pt"


def timed(command: list[str], cwd: Path, threads: int) -> dict[str, float]:
    out = cwd / f"bench_{time.time_ns()}.json"
    # The record of checked files in this folder: the first template round checks every file,
    # the later ones find them unchanged, as a user's second run does.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "BENCH_OUT": str(out),
           "XDG_CACHE_HOME": str(cwd / "cache"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), str(REPO)])}
    start = time.time()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    wall = time.time() - start
    record = json.loads(out.read_text())
    return {"wall": wall, "built": record["built"] - start,
            "fit_start": record["fit_start"] - start, "first_step": record["first_step"] - start,
            "epoch": statistics.median(record["epochs"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--peer-run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--template-only", nargs="*", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.peer_run:
        return peer_run(options.peer_run, options.epochs)

    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        csv, tensors = make_folder(workdir / "data")
        config = workdir / "user.yaml"
        config.write_text(USER_CONFIG.format(csv=csv, batch=BATCH, mean=MEAN, std=STD,
                                             epochs=options.epochs))
        variants = {
            "template, CSV + PNG folder": [sys.executable, str(REPO / "train.py"),
                                           f"--config={config}"],
            "peer, tensors in memory": [sys.executable, __file__, "--peer-run", str(tensors),
                                        f"--epochs={options.epochs}"],
            # What num_workers: null chose before it left out workers for samples that are
            # ready in memory: one per CPU.
            "template, num_workers 2": [sys.executable, str(REPO / "train.py"),
                                        f"--config={config}", "--data.init_args.num_workers=2"],
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        for round_ in range(options.rounds):
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            for name in order:
                results[name].append(timed(variants[name], workdir, options.threads))
    peer = results["peer, tensors in memory"]
    print(f"{IMAGES} {SIZE}x{SIZE} PNGs, MNISTLitModule, batch {BATCH}, {options.epochs} epochs "
          f"+ test, {options.threads} threads; medians of {options.rounds} alternating rounds")
    print("| variant | wall (s) | / peer | model built (s) | fit start (s) | first step (s) "
          "| epoch (s) | / peer |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, runs in results.items():
        def median(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        wall = statistics.median(r["wall"] / p["wall"] for r, p in zip(runs, peer, strict=True))
        epoch = statistics.median(r["epoch"] / p["epoch"] for r, p in zip(runs, peer,
                                                                          strict=True))
        print(f"| {name} | {median('wall'):.2f} | {wall:.2f} | {median('built'):.2f} | "
              f"{median('fit_start'):.2f} | {median('first_step'):.2f} | {median('epoch'):.3f} "
              f"| {epoch:.2f} |")
    print("Seconds from the process start: model built = imports, config parse and (template) "
          "the data check and cache; fit start = data set up; first step = first batch loaded.")
    return None


if __name__ == "__main__":
    main()
