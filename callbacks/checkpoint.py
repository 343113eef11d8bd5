"""ModelCheckpoint for any LightningModule: a monitor the module never logs costs no training
time, and ``last.ckpt`` is the latest state worth resuming: every epoch, every N steps or
minutes if asked, after an exception or SIGTERM."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden

from callbacks.finite_loss import all_finite
from errors import NonFiniteLossError

# {name} or {name:format} in a checkpoint file name
_PLACEHOLDER = re.compile(r"\{([^{}:]+)(?::[^{}]*)?\}")


class Checkpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (the best ``save_top_k`` files by ``monitor``/``mode``)
    plus a ``last.ckpt`` this class writes itself.

    * **A monitor the module does not log.** At the first validation of fit (the end of the
      first training epoch if there is no validation) a ``monitor`` missing from the logged
      metrics is reported in one line and best-by-metric saving is turned off: the run goes on
      and keeps ``last.ckpt`` only. Lightning would raise there, losing the epoch's training
      time and the run. (Not at the sanity check: a monitor may be a training metric, which
      the sanity check cannot have logged.) Likewise a metric in ``filename`` that the module does
      not log (it would be formatted as 0): the name falls back to ``epoch<N>-step<M>``.
    * **File names follow the monitor.** ``filename`` left out gives
      ``epoch03-loss0.1234.ckpt`` for ``monitor: val/loss``, ``epoch03-val_acc0.9800.ckpt``
      for ``val_acc``: never a metric the module does not log.
    * **``last.ckpt`` is the latest epoch.** Lightning 2.6 rewrites it only when a top-k file
      was saved at that step (when the metric improved), so ``--ckpt_path last`` could resume
      an older epoch. Here it is written at every epoch's save point (``every_n_epochs``), by
      ``trainer.save_checkpoint``, atomically with
      :class:`~callbacks.atomic_checkpoint_io.AtomicCheckpointIO`.
    * **Inside an epoch**, ``every_n_train_steps`` and ``train_time_interval`` rewrite
      ``last.ckpt`` only. Lightning would also save a best-by-metric file there, scored by the
      previous validation's metric (the monitor is stale mid-epoch); here those files are
      written at validation only. With the training loader's saved position
      (``datamodules.base``), a run resumed from such a file continues with the next batch.
    * **``save_on_exception``**: when fit stops on an exception, Ctrl+C or SIGTERM (Lightning
      lets the batch finish, then raises ``SIGTERMException``), the state at that step
      (weights, optimizer, schedule, position in the epoch) is written to ``last.ckpt``, where
      ``--ckpt_path last`` looks. Not after a NaN/inf loss or with non-finite weights (the last
      good ``last.ckpt`` is worth more), and under DDP only for Ctrl+C and SIGTERM, which reach
      every rank: saving is collective, and an exception on one rank would leave it waiting.

    Nothing is saved outside fit, under ``fast_dev_run`` or during the sanity check.

    Args:
        monitor / mode / save_top_k / every_n_epochs / dirpath / ...: as ``ModelCheckpoint``.
        filename: as ``ModelCheckpoint``; None names files after the epoch and the monitor.
        save_last: write ``last.ckpt`` (see above). Lightning's own ``save_last`` logic is
            off (the attribute ``save_last`` reads False); ``write_last`` holds this setting.
        save_on_exception: write ``last.ckpt`` when fit stops early (see above).
        every_n_train_steps: also rewrite ``last.ckpt`` every N optimizer steps.
        train_time_interval: also rewrite ``last.ckpt`` when this much training time passed
            since the last write (``"0:30:00"``); under DDP rank 0's clock decides.
    """

    def __init__(
        self,
        monitor: str | None = "val/loss",
        mode: Literal["min", "max"] = "min",
        filename: str | None = None,
        save_last: bool = True,
        save_on_exception: bool = True,
        save_top_k: int = 1,
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        if filename is None and monitor:
            filename = f"epoch{{epoch:02d}}-{monitor.rpartition('/')[2]}{{{monitor}:.4f}}"
            kwargs["auto_insert_metric_name"] = False  # the name above has its own labels
        # Lightning's own last.ckpt logic is off: this class writes last.ckpt (see above).
        super().__init__(monitor=monitor, mode=mode, filename=filename, save_last=False,
                         save_top_k=save_top_k, every_n_epochs=every_n_epochs, **kwargs)
        self.write_last = save_last
        self.write_on_exception = save_on_exception
        self.last_ckpt_every_n_train_steps = every_n_train_steps or 0
        self.last_ckpt_time_interval = train_time_interval
        self._last_write_time = time.monotonic()
        self._write_after_validation = False
        self._checked = False
        # True once this process finished a training batch: an exception before that (a schedule
        # or data refused at the start, a first step that crashes) has nothing new to save, and
        # a last.ckpt then would invite a resume into the same failure.
        self._trained_a_batch = False
        self._last_written_step: int | None = None
        # The key the callback's state is saved under repeats the settings it was built with,
        # so that it stays the same when an unlogged monitor is turned off during the run.
        self._state_key = super().state_key

    @property
    def state_key(self) -> str:
        return self._state_key

    # -- a monitor or file name metric the module does not log -------------------------------
    def check_logged_metrics(self, trainer: Trainer) -> None:
        """Once, at the first point where the monitor should have been logged."""
        self._checked = True
        logged = {*trainer.callback_metrics, "epoch", "step"}  # Lightning adds these two
        module = type(trainer.lightning_module).__name__
        if self.monitor and self.monitor not in logged:
            metrics = ", ".join(sorted(trainer.callback_metrics)) or "nothing"
            rank_zero_info(
                f"Warning: checkpoint.monitor {self.monitor!r} is not logged by {module} (it logs: "
                f"{metrics}): keeping last.ckpt only; set --checkpoint.monitor to one of its "
                "metrics for best-model checkpoints.")
            self.monitor = None
            self.save_top_k = 0
        missing = [name for name in _PLACEHOLDER.findall(self.filename or "")
                   if name not in logged]
        if missing and self.save_top_k:
            rank_zero_info(f"Warning: checkpoint.filename {self.filename!r} names {missing}, "
                           f"not logged by {module}: files are named epoch<N>-step<M> instead.")
            self.filename = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Not in the sanity check: a monitor may be a training metric, logged from step 1.
        if (not self._checked and trainer.state.fn == TrainerFn.FITTING
                and not trainer.sanity_checking):
            self.check_logged_metrics(trainer)
        super().on_validation_end(trainer, pl_module)
        if self._write_after_validation and not trainer.sanity_checking:
            self.write_step_checkpoint(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._checked and (trainer.limit_val_batches == 0
                                  or not is_overridden("validation_step", pl_module)):
            self.check_logged_metrics(trainer)  # no validation: the monitor is a train metric
        super().on_train_epoch_end(trainer, pl_module)
        # Epoch-end validation ran before this hook, so its top-k save is already done.
        every = self.every_n_epochs or 0
        if every >= 1 and (trainer.current_epoch + 1) % every == 0:
            self.save_last_checkpoint(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_write_time = time.monotonic()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._trained_a_batch = True
        if not self.step_write_due(trainer):
            return
        if validation_follows(trainer):
            # Lightning resumes a checkpoint taken between a step and its validation as if
            # that validation had run: it would be skipped. Write once it has run.
            self._write_after_validation = True
        else:
            self.write_step_checkpoint(trainer)

    def write_step_checkpoint(self, trainer: Trainer) -> None:
        self._write_after_validation = False
        self.save_last_checkpoint(trainer)
        self._last_write_time = time.monotonic()

    def step_write_due(self, trainer: Trainer) -> bool:
        """Whether this step rewrites ``last.ckpt`` (the same answer on every rank: saving is
        collective). Never between the micro-batches of an accumulated step: the gradients
        accumulated so far are not in a checkpoint."""
        if not optimizer_stepped(trainer):
            return False
        every = self.last_ckpt_every_n_train_steps
        if every and trainer.global_step % every == 0:
            return True
        if self.last_ckpt_time_interval is None:
            return False
        elapsed = time.monotonic() - self._last_write_time
        return bool(trainer.strategy.broadcast(
            elapsed >= self.last_ckpt_time_interval.total_seconds()))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.save_last_checkpoint(trainer)  # e.g. max_steps reached inside an epoch

    # -- last.ckpt ----------------------------------------------------------------------------
    def save_last_checkpoint(self, trainer: Trainer) -> str | None:
        """Write the current state to ``last.ckpt``, unless this step is already there."""
        if (not self.write_last or trainer.fast_dev_run or trainer.sanity_checking
                or trainer.state.fn != TrainerFn.FITTING
                or self._last_written_step == trainer.global_step):
            return None
        filepath = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        # Before saving: the saved callback state must name this file, or the resumed run
        # would write last-v1.ckpt beside it instead of replacing it.
        self.last_model_path = filepath
        trainer.save_checkpoint(filepath, self.save_weights_only)
        self._last_written_step = trainer.global_step
        return filepath

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if not self.write_on_exception or not self._trained_a_batch or trainer.sanity_checking:
            return
        if trainer.validating:
            # A half-run validation would be resumed as a finished one (its metrics, the best
            # checkpoint and early stopping would miss it): keep the last checkpoint from
            # before it; resuming from there runs this validation again, whole.
            rank_zero_info(f"{type(exception).__name__} during validation: not saving; "
                           f"{self.last_model_path or 'no checkpoint'} is the latest")
            return
        if trainer.world_size > 1 and not isinstance(exception, (KeyboardInterrupt,
                                                                   SIGTERMException)):
            return  # the other ranks are inside a training step: a collective save would hang
        if isinstance(exception, NonFiniteLossError) or not all_finite(pl_module):
            rank_zero_info(f"{type(exception).__name__}: not saving the non-finite state; "
                           f"{self.last_model_path or 'no checkpoint'} is the last good one")
            return
        filepath = self.save_last_checkpoint(trainer)
        if filepath:
            rank_zero_info(f"{type(exception).__name__} at step {trainer.global_step}: saved "
                           f"{filepath} (resume with --ckpt_path last)")


def optimizer_stepped(trainer: Trainer) -> bool:
    """Whether the training batch that just ended completed an accumulated step."""
    epoch_loop = trainer.fit_loop.epoch_loop
    return (epoch_loop.batch_progress.is_last_batch
            or (epoch_loop.batch_idx + 1) % trainer.accumulate_grad_batches == 0)


def validation_follows(trainer: Trainer) -> bool:
    """Whether Lightning validates right after the training batch that just ended, by its
    batch-count rule: every ``val_check_interval`` batches (by default the epoch's last batch)
    in the epochs ``check_val_every_n_epoch`` selects, or when fit is about to stop.
    Lightning decides this in a private method; a time-based ``val_check_interval`` is not
    covered."""
    if not trainer.enable_validation:
        return False
    every = trainer.check_val_every_n_epoch
    if every is not None and (trainer.current_epoch + 1) % every:
        return False
    epoch_loop = trainer.fit_loop.epoch_loop
    if trainer.should_stop:
        return True
    interval = trainer.val_check_batch
    if interval is None or interval == float("inf"):
        return epoch_loop.batch_progress.is_last_batch
    batches = epoch_loop.total_batch_idx if every is None else epoch_loop.batch_idx
    return (batches + 1) % interval == 0
