"""When one DDP rank fails, say which, and do not leave the others waiting.

Lightning already ends the job when a rank *launched by it* (rank 1..N-1) dies: a thread in
rank 0 (``_ChildProcessObserver``) polls them every 5 s and then SIGKILLs every process. Two
gaps remain. The failing rank's traceback does not say which rank it is (with N ranks writing
to one terminal, that matters), and when rank 0 itself fails it exits while the ranks it
launched stay blocked in their next collective: gloo notices the closed connection, NCCL waits
for its timeout (minutes). This callback prints ``train.py: rank R failed: ...`` on the failing
rank and, on the launching process, SIGKILLs the ranks it started.
"""

from __future__ import annotations

import signal
import subprocess
import sys

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException


class ReportRankFailure(Callback):
    """On an exception in a multi-process run: name the rank, stop the ranks this one launched.
    Ctrl+C and SIGTERM are left to Lightning (it already stops every rank for those).
    ``train.py`` always adds it."""

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        if trainer.world_size < 2 or isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        sys.stderr.write(f"train.py: rank {trainer.global_rank} failed: "
                         f"{type(exception).__name__}: {exception}\n")
        sys.stderr.flush()
        # Lightning's launchers that start processes keep them in their ``procs`` list and stop
        # them with ``kill``. Only the script launcher (``python train.py`` under DDP) fills it
        # in a process that trains; the spawning ones fill it in a parent that runs no Trainer.
        launcher = trainer.strategy.launcher
        processes = list(getattr(launcher, "procs", None) or [])
        if not processes:
            return
        launcher.kill(signal.SIGKILL)
        for process in processes:  # gone before this process exits: no orphans
            if isinstance(process, subprocess.Popen):
                process.wait(timeout=30)
            else:
                process.join(timeout=30)
