"""The end-of-run report: what a user looks for first when a run ends."""

import json
import math
import shlex
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from rich.table import Column, Table


def batch_size(batch: Any) -> int:
    """Samples in a batch: the length of its first tensor (``(images, targets)`` -> images)."""
    while isinstance(batch, (tuple, list, dict)) and batch:
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return len(batch)


class RunSummary(Callback):
    """Collects time, throughput and metrics in fit and test; train.py calls :meth:`report`
    when the command is done. Rank 0 prints the validation metrics of the best epoch (by the
    checkpoint's monitor: the tested weights) and of the last one, and the test metrics, writes
    them to ``<log_dir>/summary.json`` (``<stage>_summary.json`` for a command without fit) and
    with the hyperparameters to TensorBoard's HParams tab. Throughput: training samples (all
    ranks) per second of fit wall time, validation included."""

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
        # A resumed run reports the best epoch of the whole run (whose checkpoint is tested).
        return {"best_metrics": self.best_metrics, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_metrics = dict(state_dict.get("best_metrics") or {})
        self.best_epoch = state_dict.get("best_epoch")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.perf_counter()
        self.train_samples = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self.train_samples += batch_size(batch)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None)
        value = trainer.callback_metrics.get(monitor) if monitor else None
        if trainer.sanity_checking or value is None:
            return
        value, best = float(value), self.best_metrics.get(monitor, math.nan)
        higher = getattr(checkpoint, "mode", "min") == "max"  # a user's Checkpoint may have none
        if math.isnan(best) or (value > best if higher else value < best):
            self.best_metrics = _scalars(trainer.callback_metrics, "val")
            self.best_epoch = trainer.current_epoch

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._started
        self.fit_metrics = _scalars(trainer.callback_metrics, "val", "train")
        # Now: testing the best checkpoint restores the checkpoint callback's state from that
        # file, which predates last.ckpt when the best epoch is the first.
        self.last_checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or None

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.test_metrics = _scalars(trainer.callback_metrics, "test")

    def collect(self, trainer: Trainer) -> dict[str, Any]:
        checkpoint = trainer.checkpoint_callback
        score = getattr(checkpoint, "best_model_score", None)
        samples, seconds = self.train_samples * trainer.world_size, self.fit_seconds
        return {
            "metrics": {**self.fit_metrics, **self.test_metrics},
            "best_epoch": self.best_epoch,
            "best_epoch_metrics": self.best_metrics,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "fit_seconds": round(seconds, 3),
            "train_samples": samples,
            "samples_per_second": round(samples / seconds, 1) if seconds else None,
            "best_checkpoint": getattr(checkpoint, "best_model_path", "") or None,
            "best_score": float(score) if score is not None else None,
            "monitor": getattr(checkpoint, "monitor", None),
            "last_checkpoint": self.last_checkpoint if seconds else (
                getattr(checkpoint, "last_model_path", "") or None),
            # logger.log_dir, not trainer.log_dir: a collective, and only rank 0 reports.
            "log_dir": getattr(trainer.logger, "log_dir", None),
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
        }

    def report(self, trainer: Trainer, console: Console | None = None) -> None:
        """Print the tables and write the files. Not after predict: it has no metrics, and its
        summary.json would replace the fit's."""
        if not trainer.is_global_zero or trainer.state.fn == "predict":
            return
        summary = self.collect(trainer)
        log_dir = summary["log_dir"]
        if log_dir:
            stage = getattr(trainer.state.fn, "value", "run")
            name = "summary.json" if self.fit_seconds else f"{stage}_summary.json"
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / name).write_text(json.dumps(summary, indent=2))
        log_hparams_with_metrics(trainer, summary)
        console = console or Console()
        metrics = _metrics_table(summary)
        if len(metrics.columns) > 1:  # none e.g. after an LR range test that ends fit
            console.print(metrics)
        console.print(_table(summary))
        if log_dir:  # on its own line, never wrapped, to be copied as it is
            root = shlex.quote(str(Path(log_dir).parent))
            console.print(f"TensorBoard: tensorboard --logdir {root}", soft_wrap=True)


def log_hparams_with_metrics(trainer: Trainer, summary: dict[str, Any]) -> None:
    """The hyperparameters with the final metrics and ``best/<monitor>`` in TensorBoard's HParams
    tab. TensorBoard keeps a run's first record only: configs/default.yaml's logger has
    ``default_hp_metric: false``, so Lightning writes no placeholder at the start of fit."""
    metrics = dict(summary["metrics"])
    if summary["best_score"] is not None and summary["monitor"]:
        metrics[f"best/{summary['monitor']}"] = summary["best_score"]
    if not metrics or not summary["fit_seconds"]:
        return
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(dict(logger.hparams), metrics, step=trainer.global_step)
            # That reopened the writer the Trainer had closed: close it again, so no writer
            # thread outlives the run and nothing is left unwritten.
            logger.finalize("success")


def _metrics_table(summary: dict[str, Any]) -> Table:
    """Metric names down; the best epoch (val), the last epoch (val, train) and test across."""
    best, last, epoch = summary["best_epoch_metrics"], summary["metrics"], summary["best_epoch"]
    columns = {"best val" + (f" (epoch {epoch})" if epoch is not None else ""): _stage(best, "val"),
               "last val": _stage(last, "val"), "last train": _stage(last, "train"),
               "test": _stage(last, "test")}
    columns = {title: values for title, values in columns.items() if values}
    table = Table(Column("metric", style="bold"), *(Column(t, justify="right") for t in columns),
                  title="Metrics", title_justify="left")
    # One row per metric; a vector's entries (val/acc_per_class/3) stay in summary.json.
    names = dict.fromkeys(n for values in columns.values() for n in values if "/" not in n)
    for name in names:
        table.add_row(name, *(f"{v[name]:.4f}" if name in v else "" for v in columns.values()))
    return table


def _table(summary: dict[str, Any]) -> Table:
    table = Table(Column(style="bold"), Column(overflow="fold"), title="Run summary",
                  show_header=False, title_justify="left")
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
    for label, key in (("last checkpoint", "last_checkpoint"), ("log directory", "log_dir")):
        if summary[key]:
            table.add_row(label, summary[key])
    return table


# How modules name a stage in their metric names, before or after the metric, with / or _.
STAGE_SPELLINGS = {"train": ("train", "training"), "val": ("val", "valid", "validation"),
                   "test": ("test",)}


def _metric_of(name: str, stage: str) -> str | None:
    """``name``'s metric if ``name`` is one of ``stage`` (``val/acc``, ``val_acc``,
    ``valid_loss``, ``mse_val``, ``loss/validation``), else None."""
    for spelling in STAGE_SPELLINGS[stage]:
        for sep in "/_":
            if name.startswith(spelling + sep):
                return name[len(spelling) + 1:]
            if name.endswith(sep + spelling):
                return name[:-len(spelling) - 1]
    return None


def _scalars(metrics: dict[str, Any], *stages: str) -> dict[str, float]:
    """The scalar metrics of these stages, by their full names."""
    return {name: float(value) for name, value in sorted(metrics.items())
            if any(_metric_of(name, stage) for stage in stages)
            and getattr(value, "numel", lambda: 1)() == 1}


def _stage(metrics: dict[str, float], stage: str) -> dict[str, float]:
    """``{metric: value}`` of one stage, the stage left out of the name (``val/acc`` -> ``acc``)."""
    return {_metric_of(name, stage): value for name, value in _scalars(metrics, stage).items()
            if not name.endswith("_step")}
