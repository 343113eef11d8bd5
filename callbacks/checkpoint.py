"""ModelCheckpoint that also saves ``last.ckpt`` when fit stops on an exception or SIGTERM."""

from __future__ import annotations

import os

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info


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
    """

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING or not self._should_save_on_exception(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST)
        if trainer.is_global_zero and os.path.islink(filepath):
            os.remove(filepath)  # a real file, not a link to an older checkpoint
        # Before saving: the saved callback state must name this file, or the resumed run
        # would write last-v1.ckpt beside it instead of replacing it.
        self.last_model_path = filepath
        self._save_checkpoint(trainer, filepath)
        rank_zero_info(f"{type(exception).__name__} at step {trainer.global_step}: saved "
                       f"{filepath} (resume with --ckpt_path last)")
