"""Progress output that suits where it goes: a live bar on a terminal, plain lines in a log."""

import os
import sys
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar


def interactive_terminal() -> bool:
    """True when stdout is a terminal and no CI system (``CI`` set) runs us."""
    return os.environ.get("CI", "").lower() in ("", "0", "false") and sys.stdout.isatty()


def default_progress_bar() -> ProgressBar:
    """Rich's live bar on an interactive terminal, else :class:`LineProgressBar` (a redrawn bar
    in a log file or a CI page is one unreadable line of ``\\r`` and escape codes)."""
    return TerminalProgressBar() if interactive_terminal() else LineProgressBar()


class TerminalProgressBar(RichProgressBar):
    """Rich's bar, updated at most every ``min_interval_s`` seconds (and at an epoch's last
    batch) in training and validation. Its parent updates after every batch, a device sync per
    metric: digits fit ~20 % slower (benchmarks/overhead.py). Updates carry absolute positions,
    so skipped ones lose nothing."""

    def __init__(self, min_interval_s: float = 0.25, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_interval_s = min_interval_s
        self._last_update = 0.0

    def _due(self, batch_idx: int, total: float) -> bool:
        now = time.perf_counter()
        if batch_idx + 1 >= total or now - self._last_update >= self.min_interval_s:
            self._last_update = now
            return True
        return False

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self._due(batch_idx, self.total_train_batches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._due(batch_idx, self.total_val_batches_current_dataloader):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx,
                                            dataloader_idx)


class LineProgressBar(ProgressBar):
    """One plain line per training epoch (after its validation), and one every
    ``interval_seconds`` (0: never) inside an epoch, on rank 0; nothing for validation, test
    and predict (Lightning prints the test table)::

        epoch 3/10 step 243 (81/81 batches) 1.0 s | train/loss_step 0.61 val/loss 0.42 val/acc 0.96
    """

    def __init__(self, interval_seconds: float = 30.0) -> None:
        super().__init__()
        self.interval_seconds = interval_seconds
        self._enabled = True
        self._epoch_started = self._last_line = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_started = self._last_line = time.perf_counter()

    # A run resumed mid-epoch re-enters that epoch without on_train_epoch_start.
    on_train_start = on_train_epoch_start

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._enabled and 0 < self.interval_seconds <= now - self._last_line:
            self._last_line = now
            self._line(trainer, pl_module, batch_idx + 1)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._enabled:
            self._line(trainer, pl_module, trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def _line(self, trainer: Trainer, pl_module: LightningModule, batches: int) -> None:
        total = "?" if self.total_train_batches == float("inf") else self.total_train_batches
        epochs = "" if trainer.max_epochs in (None, -1) else f"/{trainer.max_epochs}"
        line = (f"epoch {trainer.current_epoch + 1}{epochs} step {trainer.global_step} "
                f"({batches}/{total} batches) {time.perf_counter() - self._epoch_started:.1f} s")
        metrics = self.get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        if metrics:
            line += " | " + " ".join(f"{name} {value:.4g}" if isinstance(value, float)
                                     else f"{name} {value}" for name, value in metrics.items())
        self.print(line, flush=True)
