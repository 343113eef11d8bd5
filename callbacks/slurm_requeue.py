"""SLURM's warning signal handled at the end of a training step, so the requeue checkpoint
resumes exactly.

Under SLURM, Lightning saves ``hpc_ckpt_<N>.ckpt`` inside its ``SIGUSR1`` handler, wherever
the process happens to be. In the middle of a step that checkpoint holds a batch the loader
has handed out but whose update is not in the weights: the resumed run skips it. This callback
installs its own handler before Lightning's (Lightning adds its handler only when none is
installed), remembers the signal, and at the end of the current step saves the same file in the
same place, then asks SLURM to requeue the job as Lightning does. Lightning finds the newest
``hpc_ckpt_<N>.ckpt`` in ``trainer.default_root_dir`` when the requeued job starts (or with
``--ckpt_path hpc``).

Like ``Checkpoint``'s step writes, the save waits for the end of an accumulated step and for a
validation that follows the step (Lightning resumes a checkpoint taken before a validation as
if it had run). Only active when Lightning detects SLURM (``SLURMEnvironment.detect()``) and
the strategy's ``SLURMEnvironment`` does not say ``auto_requeue=False``; elsewhere it does
nothing. Under DDP the ranks agree on the step to save at (one boolean all-reduce per step, only
under SLURM): saving is collective.
"""

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info

from callbacks.step_checkpoints import optimizer_stepped, validation_follows


def next_hpc_checkpoint(folder: str | Path) -> Path:
    """``hpc_ckpt_<N+1>.ckpt`` after the highest N in ``folder``: Lightning's naming, which its
    resume looks for."""
    numbers = [int(m.group(1)) for p in Path(folder).glob("hpc_ckpt_*.ckpt")
               if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))]
    return Path(folder) / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


def requeue_slurm_job() -> None:
    """``scontrol requeue`` this job (array jobs: this task)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = (f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job
           else os.environ["SLURM_JOB_ID"])
    try:
        result = subprocess.run(["scontrol", "requeue", job], check=False).returncode
    except FileNotFoundError:
        result = 127
    if result == 0:
        rank_zero_info(f"Requeued SLURM job {job}.")
    else:
        rank_zero_info(f"Warning: scontrol requeue {job} failed (exit status {result}); the "
                       "checkpoint is saved, resubmit the job to resume from it.")


class RequeueOnSlurmSignal(Callback):
    """Save ``hpc_ckpt_<N>.ckpt`` at the end of the step during which SLURM's warning signal
    arrived, then requeue the job.

    Args:
        signal_name: the signal of ``#SBATCH --signal=<name>@<seconds>`` (``SIGUSR1`` is
            Lightning's and SLURM's usual choice).
        requeue: run ``scontrol requeue`` after saving (the job must be ``--requeue``-able).
    """

    def __init__(self, signal_name: str = "SIGUSR1", requeue: bool = True) -> None:
        self.signal = signal.Signals[signal_name]
        self.requeue = requeue
        self.requested = False
        self._previous_handler: Any = None
        self._active = False
        self._save_after_validation = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or not SLURMEnvironment.detect():
            return
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if isinstance(environment, SLURMEnvironment) and not environment.auto_requeue:
            return  # the user opted out of requeueing
        self._previous_handler = signal.signal(self.signal, self.handle_signal)
        self._active = True

    def handle_signal(self, signum: int, frame: Any) -> None:
        # Only a flag: the process may be anywhere in a step, which is no point to save at.
        self.requested = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not self._active or not optimizer_stepped(trainer):
            return
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        if validation_follows(trainer):
            self._save_after_validation = True
            return
        self.save_and_requeue(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._save_after_validation and not trainer.sanity_checking:
            self.save_and_requeue(trainer)

    def save_and_requeue(self, trainer: Trainer) -> None:
        self.requested = self._save_after_validation = False
        path = next_hpc_checkpoint(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        rank_zero_info(f"{self.signal.name} at step {trainer.global_step}: saved {path}; the "
                       "requeued job resumes from it.")
        if self.requeue and trainer.is_global_zero:
            requeue_slurm_job()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._active:
            signal.signal(self.signal, self._previous_handler or signal.SIG_DFL)
            self._active = False
