"""A short end-of-run report: what a user looks for first when a run ends."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from rich.console import Console
from rich.table import Table


class RunSummary(Callback):
    """Collects wall time and metrics during fit/test; :meth:`report` prints them as a table and
    writes them to ``<log_dir>/summary.json`` (rank 0 only).

    train.py calls :meth:`report` once the whole command (fit, then test) is done, so the table
    appears once, after the last progress bar, instead of after every stage. The JSON file is
    for scripts (benchmarks, sweeps) that need the numbers without parsing the console.
    """

    def __init__(self) -> None:
        self.fit_seconds = 0.0
        self.fit_metrics: dict[str, float] = {}
        self.test_metrics: dict[str, float] = {}
        self._started = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.perf_counter()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._started
        self.fit_metrics = _scalars(trainer.callback_metrics, prefixes=("val/", "train/"))

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.test_metrics = _scalars(trainer.callback_metrics, prefixes=("test/",))

    def collect(self, trainer: Trainer) -> dict[str, Any]:
        checkpoint = trainer.checkpoint_callback
        # logger.log_dir, not trainer.log_dir: the latter is a collective and only rank 0 reports.
        log_dir = getattr(trainer.logger, "log_dir", None)
        score = getattr(checkpoint, "best_model_score", None)
        return {
            "metrics": {**self.fit_metrics, **self.test_metrics},
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "fit_seconds": round(self.fit_seconds, 3),
            "best_checkpoint": getattr(checkpoint, "best_model_path", "") or None,
            "best_score": float(score) if score is not None else None,
            "monitor": getattr(checkpoint, "monitor", None),
            "last_checkpoint": getattr(checkpoint, "last_model_path", "") or None,
            "log_dir": log_dir,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
        }

    def report(self, trainer: Trainer, console: Console | None = None) -> None:
        if not trainer.is_global_zero:
            return
        summary = self.collect(trainer)
        if summary["log_dir"]:
            Path(summary["log_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(summary["log_dir"]) / "summary.json").write_text(json.dumps(summary, indent=2))
        console = console or Console()
        console.print(_table(summary))
        if summary["log_dir"]:
            # On its own line and never wrapped, so it can be copied as it is.
            root = shlex.quote(str(Path(summary["log_dir"]).parent))
            console.print(f"TensorBoard: tensorboard --logdir {root}", soft_wrap=True)


def _table(summary: dict[str, Any]) -> Table:
    table = Table(title="Run summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in summary["metrics"].items():
        table.add_row(name, f"{value:.4f}")
    if summary["fit_seconds"]:
        table.add_row("epochs / steps", f"{summary['epochs']} / {summary['global_step']}")
        table.add_row("fit wall time", f"{summary['fit_seconds']:.1f} s")
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
