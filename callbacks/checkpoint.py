"""ModelCheckpoint whose ``last.ckpt`` is always the latest epoch, and is also saved when fit
stops on an exception or SIGTERM."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.atomic_checkpoint_io import AtomicCheckpointIO, link_atomically
from callbacks.finite_loss import NonFiniteLossError, all_finite


class Checkpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (best by ``monitor``/``mode``, ``last.ckpt``) whose
    ``save_on_exception`` writes the interrupted state where ``--ckpt_path last`` looks for it.

    When fit ends on an exception, Ctrl+C or SIGTERM (pre-emption: Lightning's signal handler
    lets the current batch finish, then raises ``SIGTERMException``), the full training state at
    that step (weights, optimizer, schedule, loop position mid-epoch) is saved as ``last.ckpt``.
    Lightning's own ``save_on_exception`` also writes a file named by ``filename``, e.g.
    ``epoch01-loss0.0000.ckpt`` (a missing metric formats as 0), which looks like a best
    checkpoint but is not one; and with ``save_last: link`` its ``last.ckpt`` would point at
    the previous, older checkpoint. Nothing is saved outside fit, under ``fast_dev_run``, during
    the sanity check, or when this step is already saved.

    Lightning 2.6 rewrites ``last.ckpt`` at the end of an epoch only when a top-k checkpoint
    was saved at that step, i.e. only when the monitored metric improved: after an epoch without
    improvement ``last.ckpt`` still held an older epoch, and ``--ckpt_path last`` silently
    resumed from there. Here it is rewritten at every epoch's save point (every
    ``every_n_epochs`` epochs), improved or not.

    When the best checkpoint was just written at this step, ``last.ckpt`` becomes a hard link
    to it instead of a second serialisation and write of the same state (Lightning writes
    both), which halves checkpoint I/O in every epoch that improves. Only with
    :class:`~callbacks.atomic_checkpoint_io.AtomicCheckpointIO` (never rewrites a file in
    place, so the two names cannot diverge) and only once ``last.ckpt`` exists (the saved state
    names it); otherwise, and where links fail, the file is written in full.

    Under DDP only Ctrl+C and SIGTERM (which reach every rank) are saved: an exception on one
    rank would leave the save waiting for ranks that are still training.
    No exception checkpoint is written after a NaN/inf loss
    (:class:`~callbacks.finite_loss.NonFiniteLossError`) or when any weight is no longer finite:
    resuming from that state would only repeat the failure, and the last good ``last.ckpt`` is
    worth more than a dead one.
    """

    @property
    def state_key(self) -> str:
        # Lightning rebuilds this string (a repr of five settings, fixed at construction) for
        # every hook call it makes, to label it for the profiler: keep the first one.
        key = self.__dict__.get("_state_key_cache")
        if key is None:
            key = self.__dict__["_state_key_cache"] = super().state_key
        return key

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        # Without step- or time-based saving (the default) there is nothing to decide per
        # batch; Lightning still evaluates its skip conditions after every one.
        if self._every_n_train_steps < 1 and self._train_time_interval is None:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        due = self._epoch_save_due(trainer, at_train_epoch_end=True)
        super().on_train_epoch_end(trainer, pl_module)
        if due and self._last_global_step_saved != trainer.global_step:
            self._write_last(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        due = self._epoch_save_due(trainer, at_train_epoch_end=False)
        super().on_validation_end(trainer, pl_module)
        if due and self._last_global_step_saved != trainer.global_step:
            self._write_last(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning's save_last at the end of training checks none of the skip conditions
        # above: under fast_dev_run it wrote a last.ckpt (into default_root_dir) that the
        # summary then reported.
        if trainer.fast_dev_run:
            return
        super().on_train_end(trainer, pl_module)

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, Any]) -> None:
        # Lightning calls this right after the top-k save of the same step, if there was one.
        self._link_from = None
        if self._last_global_step_saved == trainer.global_step and self.last_model_path:
            self._link_from = (self._last_checkpoint_saved, self.last_model_path)
        try:
            super()._save_last_checkpoint(trainer, monitor_candidates)
        finally:
            self._link_from = None

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        link = getattr(self, "_link_from", None)
        # The linked file's saved state names last_model_path as it was before this save:
        # only link when that is this very file.
        if (link is not None and link[1] == filepath and link[0] != filepath
                and isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)):
            linked = link_atomically(link[0], filepath) if trainer.is_global_zero else False
            if trainer.strategy.broadcast(linked):
                self._last_global_step_saved = trainer.global_step
                self._last_checkpoint_saved = filepath
                return
        super()._save_checkpoint(trainer, filepath)

    def _epoch_save_due(self, trainer: Trainer, at_train_epoch_end: bool) -> bool:
        """Whether ModelCheckpoint saves in this hook (checked before it runs: saving changes
        the answer)."""
        every = self._every_n_epochs
        return (bool(self.save_last) and every >= 1
                and (trainer.current_epoch + 1) % every == 0
                and not self._should_skip_saving_checkpoint(trainer)
                and self._should_save_on_train_epoch_end(trainer) == at_train_epoch_end)

    def _write_last(self, trainer: Trainer) -> str:
        """Save the current state as ``last.ckpt`` (a file, never a link to an older one)."""
        filepath = self.format_checkpoint_name(self._monitor_candidates(trainer),
                                               self.CHECKPOINT_NAME_LAST)
        if trainer.is_global_zero and os.path.islink(filepath):
            os.remove(filepath)  # a real file, not a link to an older checkpoint
        # Before saving: the saved callback state must name this file, or the resumed run
        # would write last-v1.ckpt beside it instead of replacing it.
        self.last_model_path = filepath
        self._save_checkpoint(trainer, filepath)
        return filepath

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING or not self._should_save_on_exception(trainer):
            return
        if trainer.world_size > 1 and not isinstance(exception, (KeyboardInterrupt,
                                                                   SIGTERMException)):
            # Saving is collective (a barrier, rank 0 writes); an exception on one rank finds
            # the others inside a training step, so the save would hang the job. Ctrl+C and
            # SIGTERM reach every rank, which then save together.
            return
        if isinstance(exception, NonFiniteLossError) or not all_finite(pl_module):
            rank_zero_info(f"{type(exception).__name__}: not saving the non-finite state; "
                           f"{self.last_model_path or 'no checkpoint'} is the last good one")
            return
        filepath = self._write_last(trainer)
        rank_zero_info(f"{type(exception).__name__} at step {trainer.global_step}: saved "
                       f"{filepath} (resume with --ckpt_path last)")
