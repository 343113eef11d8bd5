"""A short end-of-run report: what a user looks for first when a run ends."""

from __future__ import annotations

import json
import math
import shlex
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from rich.table import Table


def batch_size(batch: Any) -> int:
    """Samples in a batch: the length of its first tensor (``(images, targets)`` -> images)."""
    while isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if isinstance(batch, dict) and batch:
        return batch_size(next(iter(batch.values())))
    return len(batch)


class RunSummary(Callback):
    """Collects wall time, throughput and metrics during fit/test; :meth:`report` prints them as
    a table, writes them to ``<log_dir>/summary.json`` and records the hyperparameters with the
    final metrics in TensorBoard's HParams tab (rank 0 only). A command that did not fit
    (``validate``/``test`` on a run's checkpoint, which log into that run's folder) writes
    ``<stage>_summary.json`` instead, leaving the fit's summary as it was.

    train.py calls :meth:`report` once the whole command (fit, then test) is done, so the table
    appears once, after the last progress bar, instead of after every stage. The JSON file is
    for scripts (benchmarks, sweeps) that need the numbers without parsing the console.

    Metrics are shown side by side: the validation metrics of the best epoch (by the checkpoint's
    ``monitor``/``mode``, i.e. the weights that were tested), of the last epoch, and the test
    metrics. Throughput is training samples (all ranks) per second of fit wall time, validation
    included.
    """

    def __init__(self) -> None:
        self.fit_seconds = 0.0
        self.fit_metrics: dict[str, float] = {}
        self.best_metrics: dict[str, float] = {}
        self.best_epoch: int | None = None
        self.test_metrics: dict[str, float] = {}
        self.train_samples = 0
        self.last_checkpoint: str | None = None  # as fit left it (see on_fit_end)
        self._started = 0.0

    def state_dict(self) -> dict[str, Any]:
        # In every checkpoint, so that a resumed run reports the best epoch of the whole run
        # (the one whose checkpoint is tested), not the best of the epochs after the resume.
        return {"best_metrics": self.best_metrics, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_metrics = dict(state_dict.get("best_metrics") or {})
        self.best_epoch = state_dict.get("best_epoch")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.perf_counter()
        self.train_samples = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        self.train_samples += batch_size(batch)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None)
        value = trainer.callback_metrics.get(monitor) if monitor else None
        if value is None:
            return
        value, best = float(value), self.best_metrics.get(monitor)
        maximize = getattr(checkpoint, "mode", "min") == "max"
        if best is None or math.isnan(best) or (value > best if maximize else value < best):
            self.best_metrics = _scalars(trainer.callback_metrics, prefixes=_prefixes("val"))
            self.best_epoch = trainer.current_epoch

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._started
        self.fit_metrics = _scalars(trainer.callback_metrics, prefixes=_prefixes("val", "train"))
        # Now: testing the best checkpoint next restores the checkpoint callback's state from
        # that file, which predates last.ckpt when the best epoch is the first.
        self.last_checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or None

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.test_metrics = _scalars(trainer.callback_metrics, prefixes=_prefixes("test"))

    def collect(self, trainer: Trainer) -> dict[str, Any]:
        checkpoint = trainer.checkpoint_callback
        # logger.log_dir, not trainer.log_dir: the latter is a collective and only rank 0 reports.
        log_dir = getattr(trainer.logger, "log_dir", None)
        score = getattr(checkpoint, "best_model_score", None)
        samples = self.train_samples * trainer.world_size
        return {
            "metrics": {**self.fit_metrics, **self.test_metrics},
            "best_epoch": self.best_epoch,
            "best_epoch_metrics": self.best_metrics,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "fit_seconds": round(self.fit_seconds, 3),
            "train_samples": samples,
            "samples_per_second": round(samples / self.fit_seconds, 1)
            if self.fit_seconds else None,
            "best_checkpoint": getattr(checkpoint, "best_model_path", "") or None,
            "best_score": float(score) if score is not None else None,
            "monitor": getattr(checkpoint, "monitor", None),
            "last_checkpoint": self.last_checkpoint if self.fit_seconds else (
                getattr(checkpoint, "last_model_path", "") or None),
            "log_dir": log_dir,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
        }

    def report(self, trainer: Trainer, console: Console | None = None) -> None:
        """Print the table and write the files (train.py calls it once the command is done).
        Not after predict: it has no metrics, and its summary.json would replace the fit's."""
        if not trainer.is_global_zero or trainer.state.fn == "predict":
            return
        summary = self.collect(trainer)
        if summary["log_dir"]:
            stage = getattr(trainer.state.fn, "value", "run")
            name = "summary.json" if self.fit_seconds else f"{stage}_summary.json"
            Path(summary["log_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(summary["log_dir"]) / name).write_text(json.dumps(summary, indent=2))
        log_hparams_with_metrics(trainer, summary)
        console = console or Console()
        metrics = _metrics_table(summary)
        if len(metrics.columns) > 1:  # e.g. none after an LR range test that ends fit
            console.print(metrics)
        console.print(_table(summary))
        if summary["log_dir"]:
            # On its own line and never wrapped, so it can be copied as it is.
            root = shlex.quote(str(Path(summary["log_dir"]).parent))
            console.print(f"TensorBoard: tensorboard --logdir {root}", soft_wrap=True)


def log_hparams_with_metrics(trainer: Trainer, summary: dict[str, Any]) -> None:
    """Write the run's hyperparameters with its final metrics to TensorBoard's HParams tab.

    TensorBoard keeps only the first HParams record of a run, so this works when nothing
    wrote one earlier: ``default_hp_metric: false`` on the logger (configs/default.yaml), which
    stops Lightning's ``hp_metric = -1`` placeholder at the start of fit. The metrics are the
    final ``val/*``/``train/*``/``test/*`` values and ``best/<monitor>``, logged at the last step.
    """
    metrics = dict(summary["metrics"])
    if summary["best_score"] is not None and summary["monitor"]:
        metrics[f"best/{summary['monitor']}"] = summary["best_score"]
    if not metrics:
        return
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and summary["fit_seconds"]:
            logger.log_hyperparams(dict(logger.hparams), metrics, step=trainer.global_step)
            # The Trainer already closed the writer; the record above reopened it (a new event
            # file). finalize flushes and closes it again, so no writer thread outlives the
            # run and nothing is left unwritten if the process ends next.
            logger.finalize("success")


def _metrics_table(summary: dict[str, Any]) -> Table:
    """Metric names down, stages across: best epoch (val), last epoch (train/val), test."""
    best, flat = summary["best_epoch_metrics"], summary["metrics"]
    best_label = "best val" + (f" (epoch {summary['best_epoch']})"
                               if summary["best_epoch"] is not None else "")
    columns = [(best_label, _stage(best, "val")),
               ("last val", _stage(flat, "val")), ("last train", _stage(flat, "train")),
               ("test", _stage(flat, "test"))]
    columns = [(title, values) for title, values in columns if values]
    table = Table(title="Metrics", title_justify="left")
    table.add_column("metric", style="bold")
    names: list[str] = []
    for _, values in columns:
        # One row per metric; a vector's entries (val/acc_per_class/3) stay in summary.json.
        names += [name for name in values if name not in names and "/" not in name]
    for title, _ in columns:
        table.add_column(title, justify="right")
    for name in names:
        table.add_row(name, *(f"{values[name]:.4f}" if name in values else "" for _, values
                              in columns))
    return table


def _prefixes(*stages: str) -> tuple[str, ...]:
    """Metric names of these stages: ``val/acc`` (this template's style) or ``val_acc``."""
    return tuple(f"{stage}{sep}" for stage in stages for sep in ("/", "_"))


def _stage(metrics: dict[str, float], stage: str) -> dict[str, float]:
    """``{metric: value}`` of one stage, the stage prefix removed (``val/acc``, ``val_acc``)."""
    return {name[len(stage) + 1:]: value for name, value in metrics.items()
            if name.startswith(_prefixes(stage)) and not name.endswith("_step")}


def _table(summary: dict[str, Any]) -> Table:
    table = Table(title="Run summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    if summary["fit_seconds"]:
        table.add_row("epochs / steps", f"{summary['epochs']} / {summary['global_step']}")
        table.add_row("fit wall time", f"{summary['fit_seconds']:.1f} s")
        if summary["samples_per_second"]:
            table.add_row("throughput", f"{summary['samples_per_second']:.0f} training "
                          "samples/s (fit wall time)")
    if summary["best_checkpoint"]:
        score = summary["best_score"]
        best = f" ({summary['monitor']}={score:.4f})" if score is not None else ""
        table.add_row("best checkpoint", summary["best_checkpoint"] + best)
    if summary["last_checkpoint"]:
        table.add_row("last checkpoint", summary["last_checkpoint"])
    if summary["log_dir"]:
        table.add_row("log directory", summary["log_dir"])
    return table


def _scalars(metrics: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in sorted(metrics.items())
        if name.startswith(prefixes) and getattr(value, "numel", lambda: 1)() == 1
    }
