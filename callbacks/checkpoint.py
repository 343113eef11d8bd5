"""ModelCheckpoint whose ``last.ckpt`` is always the latest state worth resuming, and which
goes on training when the module does not log its monitor."""

import re
import time
from datetime import timedelta
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

_PLACEHOLDER = re.compile(r"\{([^{}:]+)(?::[^{}]*)?\}")  # {name} or {name:format} in a file name


class Checkpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (the best ``save_top_k`` files by ``monitor``) plus a
    ``last.ckpt`` of its own, written at every epoch's save point (Lightning 2.6 rewrites it only
    when the monitor improved: tests/test_workarounds.py), every N steps or minutes if asked (no
    best file there: the monitor is stale mid-epoch), and when fit stops on an exception, Ctrl+C
    or SIGTERM: not for a non-finite state (the last good file is worth more), nor under DDP for
    an exception, which does not reach every rank (saving is collective: it would hang).

    A ``monitor`` or ``filename`` metric the module does not log is said in one line at the
    first validation of fit (not the sanity check: it may be a training metric), then best files
    are dropped or named ``epoch<N>-step<M>``, where Lightning would raise (or write 0).

    Args:
        monitor: the metric that picks the best checkpoints.
        mode: ``min`` or ``max``: which ``monitor`` value is best.
        filename: None names files after the epoch and the monitor (``epoch03-loss0.1234``).
        save_last: write ``last.ckpt`` (the attribute ``write_last``; Lightning's own is off).
        save_on_exception: write ``last.ckpt`` when fit stops early.
        save_top_k: how many best files to keep.
        every_n_epochs: epochs between save points.
        every_n_train_steps: also rewrite ``last.ckpt`` every N optimizer steps.
        train_time_interval: also rewrite ``last.ckpt`` after this much training time
            (``"0:30:00"``); under DDP rank 0's clock decides.
    """

    def __init__(self, monitor: str | None = "val/loss", mode: Literal["min", "max"] = "min",
                 filename: str | None = None, save_last: bool = True,
                 save_on_exception: bool = True, save_top_k: int = 1,
                 every_n_epochs: int | None = None, every_n_train_steps: int | None = None,
                 train_time_interval: timedelta | None = None, **kwargs: Any) -> None:
        if filename is None and monitor:
            filename = f"epoch{{epoch:02d}}-{monitor.rpartition('/')[2]}{{{monitor}:.4f}}"
            kwargs["auto_insert_metric_name"] = False  # the name has its own labels
        super().__init__(monitor=monitor, mode=mode, filename=filename, save_last=False,
                         save_top_k=save_top_k, every_n_epochs=every_n_epochs, **kwargs)
        self.write_last, self.write_on_exception = save_last, save_on_exception
        self.step_writes = None  # every N steps or minutes: an option
        if every_n_train_steps or train_time_interval is not None:
            from callbacks.step_checkpoints import StepWrites

            self.step_writes = StepWrites(every_n_train_steps or 0, train_time_interval)
        self._checked = False
        # Nothing to save before a batch trained: a resume would repeat the same failure.
        self._trained_a_batch = False
        self._last_written_step: int | None = None
        # Fixed now, so that it stays the same when an unlogged monitor is turned off.
        self._state_key = super().state_key

    @property
    def state_key(self) -> str:
        return self._state_key

    def check_logged_metrics(self, trainer: Trainer) -> None:
        """Once, where the monitor should first have been logged."""
        self._checked = True
        logged = {*trainer.callback_metrics, "epoch", "step"}  # Lightning adds these two
        module = type(trainer.lightning_module).__name__
        if self.monitor and self.monitor not in logged:
            metrics = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
            rank_zero_info(
                f"Warning: checkpoint.monitor {self.monitor!r} is not logged by {module} (it logs: "
                f"{metrics}): keeping last.ckpt only; set --checkpoint.monitor to one of its "
                "metrics for best-model checkpoints.")
            self.monitor, self.save_top_k = None, 0
        missing = [name for name in _PLACEHOLDER.findall(self.filename or "") if name not in logged]
        if missing and self.save_top_k:
            rank_zero_info(f"Warning: checkpoint.filename {self.filename!r} names {missing}, "
                           f"not logged by {module}: files are named epoch<N>-step<M> instead.")
            self.filename = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if fitting and not self._checked:
            self.check_logged_metrics(trainer)
        super().on_validation_end(trainer, pl_module)
        if fitting and self.step_writes and self.step_writes.after_validation:
            self.step_writes.write(self, trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._checked and not trainer.enable_validation:
            self.check_logged_metrics(trainer)  # no validation: the monitor is a train metric
        super().on_train_epoch_end(trainer, pl_module)  # after the epoch's validation
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.save_last_checkpoint(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.step_writes:
            self.step_writes.last_write_time = time.monotonic()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._trained_a_batch = True
        if self.step_writes:
            self.step_writes.on_train_batch_end(self, trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.save_last_checkpoint(trainer)  # e.g. max_steps reached inside an epoch

    def save_last_checkpoint(self, trainer: Trainer) -> str | None:
        """Write the current state to ``last.ckpt``, unless this step is already there."""
        if (not self.write_last or trainer.fast_dev_run or trainer.sanity_checking
                or trainer.state.fn != TrainerFn.FITTING
                or self._last_written_step == trainer.global_step):
            return None
        filepath = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        # Before saving: the saved state must name this file, or a resumed run would write
        # last-v1.ckpt beside it.
        self.last_model_path = filepath
        trainer.save_checkpoint(filepath, self.save_weights_only)
        self._last_written_step = trainer.global_step
        return filepath

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        if self.write_on_exception and self._trained_a_batch and not trainer.sanity_checking:
            from callbacks.exception_checkpoint import save_on_exception

            save_on_exception(self, trainer, pl_module, exception)
