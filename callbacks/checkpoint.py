"""ModelCheckpoint whose ``last.ckpt`` is always the latest state worth resuming, and which
goes on training when the module does not log its monitor."""

import re
import time
from datetime import timedelta
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from errors import NonFiniteLossError

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
        self.last_ckpt_every_n_train_steps = every_n_train_steps or 0
        self.last_ckpt_time_interval = train_time_interval
        self._last_write_time = time.monotonic()
        self._write_after_validation = self._checked = False
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
        if fitting and self._write_after_validation:
            self.write_step_checkpoint(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._checked and not trainer.enable_validation:
            self.check_logged_metrics(trainer)  # no validation: the monitor is a train metric
        super().on_train_epoch_end(trainer, pl_module)  # after the epoch's validation
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.save_last_checkpoint(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_write_time = time.monotonic()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._trained_a_batch = True
        if self.step_write_due(trainer):
            # Lightning resumes a checkpoint taken between a step and its validation as if that
            # validation had run (it would be skipped): write once it has run.
            self._write_after_validation = validation_follows(trainer)
            if not self._write_after_validation:
                self.write_step_checkpoint(trainer)

    def write_step_checkpoint(self, trainer: Trainer) -> None:
        self._write_after_validation = False
        self.save_last_checkpoint(trainer)
        self._last_write_time = time.monotonic()

    def step_write_due(self, trainer: Trainer) -> bool:
        """Whether this step rewrites ``last.ckpt``, alike on every rank (saving is collective);
        never inside an accumulated step, whose gradients so far a checkpoint does not hold."""
        if not optimizer_stepped(trainer):
            return False
        every, interval = self.last_ckpt_every_n_train_steps, self.last_ckpt_time_interval
        if every and trainer.global_step % every == 0:
            return True
        return interval is not None and bool(trainer.strategy.broadcast(
            time.monotonic() - self._last_write_time >= interval.total_seconds()))

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
        if not self.write_on_exception or not self._trained_a_batch or trainer.sanity_checking:
            return
        name, latest = type(exception).__name__, self.last_model_path or "no checkpoint"
        if trainer.validating:
            # A half-run validation would be resumed as a finished one: keep the checkpoint
            # from before it, so that a resume runs it again, whole.
            rank_zero_info(f"{name} during validation: not saving; {latest} is the latest")
        elif trainer.world_size > 1 and not isinstance(exception, (KeyboardInterrupt,
                                                                     SIGTERMException)):
            return  # the other ranks are inside a training step: a collective save would hang
        elif isinstance(exception, NonFiniteLossError) or not all_finite(pl_module):
            rank_zero_info(f"{name}: not saving the non-finite state; {latest} is the last "
                           "good one")
        elif filepath := self.save_last_checkpoint(trainer):
            rank_zero_info(f"{name} at step {trainer.global_step}: saved {filepath} (resume "
                           "with --ckpt_path last)")


def optimizer_stepped(trainer: Trainer) -> bool:
    """Whether the training batch that just ended completed an accumulated step."""
    epoch_loop = trainer.fit_loop.epoch_loop
    return (epoch_loop.batch_progress.is_last_batch
            or (epoch_loop.batch_idx + 1) % trainer.accumulate_grad_batches == 0)


def validation_follows(trainer: Trainer) -> bool:
    """Whether Lightning validates right after the training batch that just ended: its own
    (private) batch-count rule, every ``val_check_interval`` batches in the epochs
    ``check_val_every_n_epoch`` selects, or when fit is about to stop. A time-based
    ``val_check_interval`` is not covered."""
    every = trainer.check_val_every_n_epoch
    if not trainer.enable_validation or (every is not None and (trainer.current_epoch + 1) % every):
        return False
    if trainer.should_stop:
        return True
    epoch_loop, interval = trainer.fit_loop.epoch_loop, trainer.val_check_batch
    if interval is None or interval == float("inf"):
        return epoch_loop.batch_progress.is_last_batch
    batches = epoch_loop.total_batch_idx if every is None else epoch_loop.batch_idx
    return (batches + 1) % interval == 0


def all_finite(module: torch.nn.Module) -> bool:
    """True if every parameter and buffer is finite (worth saving)."""
    tensors = [*module.parameters(), *module.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
