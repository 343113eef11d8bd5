"""``Checkpoint``'s rewrites of ``last.ckpt`` every N optimizer steps or minutes of training (its
``every_n_train_steps`` and ``train_time_interval`` options), and the step rules that
``callbacks.slurm_requeue`` shares."""

import time
from datetime import timedelta

from lightning.pytorch import Trainer

from callbacks.checkpoint import Checkpoint


class StepWrites:
    """Which steps rewrite ``last.ckpt``, and the write (``checkpoint.save_last_checkpoint``)."""

    def __init__(self, every_n_train_steps: int, train_time_interval: timedelta | None) -> None:
        self.every_n_train_steps = every_n_train_steps
        self.train_time_interval = train_time_interval
        self.last_write_time = time.monotonic()
        self.after_validation = False

    def due(self, trainer: Trainer) -> bool:
        """Whether this step rewrites ``last.ckpt``, alike on every rank (saving is collective);
        never inside an accumulated step, whose gradients so far a checkpoint does not hold."""
        if not optimizer_stepped(trainer):
            return False
        every, interval = self.every_n_train_steps, self.train_time_interval
        if every and trainer.global_step % every == 0:
            return True
        return interval is not None and bool(trainer.strategy.broadcast(
            time.monotonic() - self.last_write_time >= interval.total_seconds()))

    def on_train_batch_end(self, checkpoint: Checkpoint, trainer: Trainer) -> None:
        if self.due(trainer):
            # Lightning resumes a checkpoint taken between a step and its validation as if that
            # validation had run (it would be skipped): write once it has run.
            self.after_validation = validation_follows(trainer)
            if not self.after_validation:
                self.write(checkpoint, trainer)

    def write(self, checkpoint: Checkpoint, trainer: Trainer) -> None:
        self.after_validation = False
        checkpoint.save_last_checkpoint(trainer)
        self.last_write_time = time.monotonic()


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
