"""Wall time of the template's fit against a hand-written PyTorch loop and Lightning's own floor,
``Trainer(barebones=True)``, doing the same training, run alternately in one process.

    python benchmarks/overhead.py [--repeats 5] [--epochs 10] [--threads N]

Every variant trains the default digits recipe from the same seed: ``SmallCNN`` with the
default widths, the same cached uint8 images through the same ``DigitsDataModule`` loaders
(same sampler, batch 16) and the same batch transforms (Pad(2), ToDtype, Normalize) applied to
each batch, AdamW (lr 0.01, weight decay 0.05 on weights only, ``models.param_groups``) with
OneCycleLR stepped every step, cross-entropy with label smoothing 0.1, the same number of
steps, and a validation pass over the 144 validation images after every epoch.

- plain PyTorch loop: the loop a user would write; validation accumulates loss and accuracy on
  the device and reads them once per epoch. No logging, checkpoints or progress output.
- Lightning barebones: a minimal LightningModule with the same steps, ``Trainer(barebones=True)``
  (no logger, checkpoints, progress bar, sanity check; ``self.log`` is not allowed there).
- template: ``python train.py fit`` with the default configs unchanged, everything on:
  TensorBoard logger, the default callbacks, best + last checkpoint every epoch, the 2-batch
  sanity check, torchmetrics accuracy + F1 per stage, the model summary and the progress bar
  the output calls for: Rich's bar on a terminal (run here on a pseudo-terminal), plain lines
  otherwise (``LineProgressBar``).
- lightning-hydra-template style: the same training written as ashleve/lightning-hydra-template's
  ``src/models/mnist_module.py`` and default trainer + callbacks configs write it: torchmetrics
  objects (``MulticlassAccuracy``, ``MeanMetric`` losses, ``MaxMetric`` best val accuracy)
  updated and passed to ``self.log(..., on_step=False, on_epoch=True, prog_bar=True)`` every
  step, reset in ``on_train_start``; ``RichProgressBar`` (on the pseudo-terminal),
  ``ModelCheckpoint`` (val/acc max, best + last), ``EarlyStopping`` (patience 100),
  ``RichModelSummary`` (all depths), TensorBoard, the sanity check, Lightning's default
  ``log_every_n_steps`` (50); a fresh output directory per run, as Hydra makes one.

The time is that of ``Trainer.fit`` (for the loop, the same span: model, optimizer and all
epochs), so argument parsing and reading the images, the same for everyone, are left out (the
template reads them in the datamodule's hooks inside ``fit``: their time is taken out).
The variants alternate within each round, ``--repeats`` rounds; times are medians over rounds,
ratios the median of the per-round ratios (see ``paired_ratio``).
"""

import argparse
import contextlib
import io
import logging
import os
import pty
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import (
    EarlyStopping,
    ModelCheckpoint,
    RichModelSummary,
    RichProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import train  # noqa: E402
from configs import default_config_files  # noqa: E402
from datamodules.digits import DigitsDataModule  # noqa: E402
from models.param_groups import param_groups_weight_decay  # noqa: E402
from models.small_cnn import SmallCNN  # noqa: E402

SEED = 0
LR, WEIGHT_DECAY, LABEL_SMOOTHING, BATCH_SIZE = 0.01, 0.05, 0.1, 16


def default_recipe_data(root: Path) -> DigitsDataModule:
    """The datamodule exactly as the default run builds it (through the CLI's parser)."""
    cli = train.TemplateCLI(
        args=["--data.init_args.root", str(root)], run=False,
        parser_kwargs={"default_config_files": default_config_files([], "fit")},
        save_config_callback=None, auto_configure_optimizers=False,
    )
    data = cli.datamodule
    data.prepare_data()
    data.setup("fit")
    return data


def small_cnn(num_classes: int) -> nn.Module:
    return SmallCNN(num_classes, in_channels=1, widths=(32, 64, 128), pool_after=(1,),
                    dropout=0.1)


def optimizer_and_schedule(
    model: nn.Module, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model), lr=LR,
                                  weight_decay=WEIGHT_DECAY)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR,
                                                          total_steps=total_steps)


# -- plain PyTorch ---------------------------------------------------------------------------
def plain_loop(data: DigitsDataModule, epochs: int) -> float:
    seed_everything(SEED, verbose=False)
    start = time.perf_counter()
    model = small_cnn(len(data.class_names))
    train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
    optimizer, schedule = optimizer_and_schedule(model, epochs * len(train_loader))
    for epoch in range(epochs):
        train_loader.sampler.set_epoch(epoch)  # a new draw each epoch, as Lightning does
        model.train()
        for images, targets in train_loader:
            loss = F.cross_entropy(model(data.train_batch_transforms(images)), targets,
                                   label_smoothing=LABEL_SMOOTHING)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        total_loss, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
        with torch.no_grad():
            for images, targets in val_loader:
                logits = model(data.eval_batch_transforms(images))
                total_loss += F.cross_entropy(logits, targets, reduction="sum",
                                              label_smoothing=LABEL_SMOOTHING)
                correct += (logits.argmax(-1) == targets).sum()
                seen += len(targets)
        float(total_loss / seen), float(correct / seen)  # what an epoch line would print
    return time.perf_counter() - start


# -- Lightning, barebones --------------------------------------------------------------------
class BarebonesClassifier(LightningModule):
    """The same steps as the plain loop, in the minimal LightningModule form."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = small_cnn(num_classes)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        return F.cross_entropy(self.net(images), targets, label_smoothing=LABEL_SMOOTHING)

    def on_validation_epoch_start(self) -> None:
        self.val_sums = torch.zeros(3)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, targets = batch
        logits = self.net(images)
        loss = F.cross_entropy(logits, targets, reduction="sum", label_smoothing=LABEL_SMOOTHING)
        correct = (logits.argmax(-1) == targets).sum()
        self.val_sums += torch.stack([loss, correct.float(), torch.tensor(float(len(targets)))])

    def on_validation_epoch_end(self) -> None:
        loss, correct, seen = self.val_sums.tolist()
        self.val_metrics = (loss / seen, correct / seen)

    def configure_optimizers(self) -> Any:
        optimizer, schedule = optimizer_and_schedule(self.net,
                                                     self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule,
                                                         "interval": "step"}}


def barebones_lightning(data: DigitsDataModule, epochs: int) -> float:
    seed_everything(SEED, verbose=False)
    trainer = Trainer(barebones=True, max_epochs=epochs, accelerator="cpu", devices=1)
    model = BarebonesClassifier(len(data.class_names))
    with fit_clock() as clock:
        trainer.fit(model, datamodule=data)
    return clock.seconds


# -- the template ----------------------------------------------------------------------------
def template(data_root: Path, logs: Path, epochs: int, terminal: bool) -> float:
    args = ["fit", f"--data.init_args.root={data_root}", f"--max_epochs={epochs}",
            f"--trainer.logger.init_args.save_dir={logs}", f"--trainer.default_root_dir={logs}"]
    output = pseudo_terminal() if terminal else redirected_to_file()
    with output, fit_clock() as clock, contextlib.redirect_stderr(io.StringIO()):
        cli = train.main(args)
    assert cli.trainer.global_step == epochs * len(cli.datamodule.train_dataloader())
    return clock.seconds


# -- lightning-hydra-template style ----------------------------------------------------------
class HydraTemplateStyleClassifier(LightningModule):
    """The same steps as lightning-hydra-template's ``MNISTLitModule`` writes them."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = small_cnn(num_classes)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
        # what Accuracy(task="multiclass", num_classes=...) builds: micro average
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    def on_train_start(self) -> None:  # drop what the sanity check accumulated
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()

    def model_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        images, targets = batch
        logits = self.net(images)
        return self.criterion(logits, targets), logits.argmax(dim=1), targets

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, preds, targets = self.model_step(batch)
        self.train_loss(loss)
        self.train_acc(preds, targets)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, preds, targets = self.model_step(batch)
        self.val_loss(loss)
        self.val_acc(preds, targets)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        optimizer, schedule = optimizer_and_schedule(self.net,
                                                     self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule,
                                                         "interval": "step"}}


def hydra_template_style(data: DigitsDataModule, workdir: Path, epochs: int) -> float:
    seed_everything(SEED, verbose=False)
    with tempfile.TemporaryDirectory(dir=workdir) as out, pseudo_terminal(), \
            contextlib.redirect_stderr(io.StringIO()):
        checkpoint = ModelCheckpoint(Path(out) / "checkpoints", "epoch_{epoch:03d}",
                                     monitor="val/acc", mode="max", save_last=True,
                                     auto_insert_metric_name=False)
        trainer = Trainer(
            max_epochs=epochs, min_epochs=1, accelerator="cpu", devices=1, default_root_dir=out,
            logger=TensorBoardLogger(out, name="tensorboard"),
            callbacks=[checkpoint, EarlyStopping("val/acc", patience=100, mode="max"),
                       RichModelSummary(max_depth=-1), RichProgressBar()],
        )
        model = HydraTemplateStyleClassifier(len(data.class_names))
        with fit_clock() as clock:
            trainer.fit(model, datamodule=data)
    assert trainer.global_step == epochs * len(data.train_dataloader())
    return clock.seconds


class _Clock:
    seconds = 0.0


@contextlib.contextmanager
def fit_clock() -> Iterator[_Clock]:
    """Times every ``Trainer.fit`` call made inside (train.py makes it deep in LightningCLI),
    less the time the datamodule's ``prepare_data``/``setup`` take inside it: train.py reads and
    decodes the images in Lightning's own data hooks, inside ``fit``, and reading the images is
    left out for every variant (the others read them before the clock starts)."""
    clock, original = _Clock(), Trainer.fit
    originals = {name: getattr(DigitsDataModule, name) for name in ("prepare_data", "setup")}

    @wraps(original)
    def timed(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            clock.seconds += time.perf_counter() - start

    def untimed(hook: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(hook)
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                clock.seconds -= time.perf_counter() - start
        return run

    Trainer.fit = timed  # type: ignore[method-assign]
    for name, hook in originals.items():
        setattr(DigitsDataModule, name, untimed(hook))
    try:
        yield clock
    finally:
        Trainer.fit = original  # type: ignore[method-assign]
        for name, hook in originals.items():
            setattr(DigitsDataModule, name, hook)


@contextlib.contextmanager
def pseudo_terminal() -> Iterator[None]:
    """Point stdout at a pseudo-terminal, as an interactive shell would; CI unset, so the
    template picks Rich's live bar. A thread drains what is drawn."""
    leader, follower = pty.openpty()
    drain = threading.Thread(target=_drain, args=(leader,), daemon=True)
    drain.start()
    saved_ci = os.environ.pop("CI", None)
    terminal = open(follower, "w", buffering=1, encoding="utf-8")  # noqa: SIM115
    try:
        with contextlib.redirect_stdout(terminal):
            yield
    finally:
        terminal.close()
        drain.join(timeout=5)
        os.close(leader)
        if saved_ci is not None:
            os.environ["CI"] = saved_ci


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass


@contextlib.contextmanager
def redirected_to_file() -> Iterator[None]:
    """stdout to a file, as under nohup or a batch system: the template prints plain lines."""
    with tempfile.TemporaryFile("w+") as file, contextlib.redirect_stdout(file):
        yield


# -- the table -------------------------------------------------------------------------------
def measure(repeats: int, epochs: int, workdir: Path) -> tuple[dict[str, list[float]], int]:
    data_root = workdir / "data" / "digits"
    data = default_recipe_data(data_root)
    variants: dict[str, Callable[[], float]] = {
        "plain PyTorch loop": lambda: plain_loop(data, epochs),
        "Lightning, Trainer(barebones=True)": lambda: barebones_lightning(data, epochs),
        "template, terminal (Rich bar)": lambda: template(data_root, workdir / "logs", epochs,
                                                          terminal=True),
        "template, log file (plain lines)": lambda: template(data_root, workdir / "logs", epochs,
                                                             terminal=False),
        "lightning-hydra-template style (Rich bar)": lambda: hydra_template_style(data, workdir,
                                                                                 epochs),
    }
    for run in variants.values():  # warm-up: first-call costs (lazy imports, allocator)
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(repeats):
        for name, run in variants.items():
            times[name].append(run())
        print(f"round {round_ + 1}/{repeats}: " + ", ".join(
            f"{name} {t[-1]:.2f} s" for name, t in times.items()), file=sys.stderr, flush=True)
    return times, epochs * len(data.train_dataloader())


def paired_ratio(times: dict[str, list[float]], name: str, versus: str) -> float:
    """Median over rounds of ``name``'s time over ``versus``'s in the same round. The machine's
    speed drifts by ~10 % over minutes (a fixed matmul loop varies that much here); runs a few
    seconds apart see nearly the same speed, so per-round ratios are far steadier than a ratio
    of medians taken over the whole invocation."""
    return statistics.median(t / v for t, v in zip(times[name], times[versus], strict=True))


def print_table(times: dict[str, list[float]], epochs: int, steps: int) -> None:
    median = {name: statistics.median(t) for name, t in times.items()}
    rounds = len(next(iter(times.values())))
    print(f"{epochs} epochs, {steps} steps of batch {BATCH_SIZE}, {rounds} alternating rounds, "
          f"{torch.get_num_threads()} torch threads; ratios: median over rounds of the ratio "
          "within the round\n")
    print("| variant | s per epoch (median) | fit s (median) | min | vs plain loop | "
          "vs barebones |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, t in times.items():
        print(f"| {name} | {median[name] / epochs:.3f} | {median[name]:.2f} | {min(t):.2f} | "
              f"{paired_ratio(times, name, 'plain PyTorch loop'):.2f}x | "
              f"{paired_ratio(times, name, 'Lightning, Trainer(barebones=True)'):.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's, one per core); 1 keeps "
                             "timings stable on a machine other processes share")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # "GPU available: ..."
    with tempfile.TemporaryDirectory() as tmp:
        times, steps = measure(args.repeats, args.epochs, Path(tmp))
    print_table(times, args.epochs, steps)


if __name__ == "__main__":
    main()
