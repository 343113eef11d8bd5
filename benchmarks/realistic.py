"""The template's fit against a bare LightningModule + Trainer on a realistic CPU workload: a
folder of 3,000 32x32 RGB PNGs in 4 classes listed in a CSV, ``SmallCNN``, batch 128, 3 epochs.

    python benchmarks/realistic.py [--repeats 3] [--before DIR] [--threads N]

- template: ``train.py fit`` with ``configs/default.yaml`` unchanged (logger, checkpoints,
  every default callback) on that folder: ``ImageClassifier`` with its default ``SmallCNN``,
  AdamW + OneCycleLR, images cached in memory, ToDtype + Normalize on each batch.
- bare: the same datamodule, network, optimizer and schedule, a LightningModule of a dozen
  lines (cross-entropy, ``self.log`` of the validation loss per epoch) and ``Trainer`` with its
  defaults (its own logger and checkpoint), the progress bar off as in the template run.
- ``--before DIR``: the template as checked out in DIR too (e.g. a ``git worktree`` of an
  older commit), to measure what a change costs or earns.

Each run is its own process. The time is the fit's, from ``on_fit_start`` to ``on_fit_end``
(reading and caching the images, in ``setup``, is left out for everyone). The variants alternate
within each round; the ratio (the template's fit time over the variant's: goal <= 1.05x
against the bare one) is the median of the per-round ratios, which are listed too.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EPOCHS, BATCH, IMAGES, SIZE = 3, 128, 3000, 32
DATA = """\
data:
  class_path: datamodules.image_csv.ImageCSVDataModule
  init_args:
    annotations: {csv}
    batch_size: {batch}
    cache_images: true
    train_batch_transforms: &normalise
      class_path: torchvision.transforms.v2.Compose
      init_args:
        transforms:
          - class_path: torchvision.transforms.v2.ToDtype
            init_args: {{dtype: torch.float32, scale: true}}
          - class_path: torchvision.transforms.v2.Normalize
            init_args: {{mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}
    eval_batch_transforms: *normalise
"""


def template(tree: Path, config: Path, workdir: Path, threads: int) -> float:
    logs = Path(tempfile.mkdtemp(dir=workdir))
    subprocess.run([sys.executable, str(tree / "train.py"), "fit", f"--config={config}",
                    f"--trainer.max_epochs={EPOCHS}", "--trainer.enable_progress_bar=false",
                    f"--trainer.logger.init_args.save_dir={logs}"],
                   cwd=workdir, check=True, capture_output=True, env=_env(threads))
    (summary,) = logs.glob("*/version_*/summary.json")
    return json.loads(summary.read_text())["fit_seconds"]


def bare(config: Path, workdir: Path, threads: int) -> float:
    done = subprocess.run([sys.executable, __file__, "--bare-run", str(config)], cwd=workdir,
                          check=True, capture_output=True, text=True, env=_env(threads))
    return float(done.stdout.split()[-1])


def _env(threads: int) -> dict[str, str]:
    import os

    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def bare_run(config: Path) -> None:
    """The bare variant, in this process: prints the fit's seconds."""
    import torch
    import torch.nn.functional as F
    import yaml
    from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

    sys.path.insert(0, str(REPO))
    from models.small_cnn import SmallCNN
    from sweeps.train_config import datamodule_from

    class Bare(LightningModule):
        def __init__(self, classes: int) -> None:
            super().__init__()
            self.net = SmallCNN(classes, in_channels=3)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1], label_smoothing=0.1)

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", F.cross_entropy(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=0.05)
            schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=0.01, total_steps=self.trainer.estimated_stepping_batches)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    class Clock(Callback):
        def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
            self.start = time.perf_counter()

        def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
            self.seconds = time.perf_counter() - self.start

    seed_everything(0)
    data = datamodule_from(yaml.safe_load(config.read_text())["data"])
    data.prepare_data()
    data.setup("fit")
    clock = Clock()
    trainer = Trainer(max_epochs=EPOCHS, enable_progress_bar=False, callbacks=[clock],
                      default_root_dir=str(config.parent / "bare_logs"))
    trainer.fit(Bare(data.num_classes), datamodule=data)
    print(clock.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another checkout of the template")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bare-run", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.bare_run:
        return bare_run(options.bare_run)

    sys.path.insert(0, str(REPO / "benchmarks"))
    from data_pipeline import make_images

    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        (workdir / "images").mkdir()
        csv = make_images(workdir / "images", IMAGES, SIZE)
        config = workdir / "data.yaml"
        config.write_text(DATA.format(csv=csv, batch=BATCH))
        variants = {"template": lambda: template(REPO, config, workdir, options.threads),
                    "bare LightningModule + Trainer":
                        lambda: bare(config, workdir, options.threads)}
        if options.before:
            before = options.before.resolve()
            variants["template before"] = lambda: template(before, config, workdir,
                                                           options.threads)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(options.repeats):
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            for name in order:
                times[name].append(variants[name]())
    print(f"{IMAGES} {SIZE}x{SIZE} RGB PNGs, 4 classes, SmallCNN, batch {BATCH}, {EPOCHS} "
          f"epochs, {options.threads} threads; fit seconds, median of {options.repeats}")
    print("| variant | fit (s) | template / this (median) | per round |")
    print("| --- | ---: | ---: | --- |")
    for name, values in times.items():
        ratios = [t / v for v, t in zip(values, times["template"], strict=True)]
        print(f"| {name} | {statistics.median(values):.2f} | {statistics.median(ratios):.3f}x "
              f"| {', '.join(f'{r:.2f}' for r in ratios)} |")
    return None


if __name__ == "__main__":
    main()
