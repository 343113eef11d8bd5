"""When one DDP rank fails, say which, and do not leave the others waiting.

Lightning ends the job when a rank it launched dies, but the failing rank's traceback does not
name it, and when rank 0 fails the ranks it launched wait in their next collective (NCCL: until
its timeout, minutes). Only rank 0's launched processes need ending: when another rank dies,
Lightning's child-process observer (polling every 5 s) kills the rest.
"""

import signal
import sys

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException


class ReportRankFailure(Callback):
    """On an exception in a multi-process run, print ``train.py: rank R failed: ...`` and kill
    the ranks this one launched. Ctrl+C and SIGTERM are Lightning's (it stops every rank)."""

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        if trainer.world_size < 2 or isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        sys.stderr.write(f"train.py: rank {trainer.global_rank} failed: "
                         f"{type(exception).__name__}: {exception}\n")
        sys.stderr.flush()
        # Launchers that start processes keep them in ``procs``; only the script launcher
        # (``python train.py`` under DDP) fills it in a process that trains.
        launcher = trainer.strategy.launcher
        processes = list(getattr(launcher, "procs", None) or [])
        if processes:
            launcher.kill(signal.SIGKILL)
        for process in processes:  # gone before this process exits: no orphans
            process.wait(timeout=30)
