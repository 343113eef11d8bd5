"""Failures injected into a real ``train.py`` process at an exact point, for
``tests/test_reliability.py``: added with ``--trainer.callbacks+=tests.reliability_hooks.<Class>``.
No sleeps, no timing: each acts in a hook at a chosen step."""

import os
import signal
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch import Callback, LightningModule, Trainer


class SigkillAtStep(Callback):
    """``kill -9`` of this process when the training step ``step`` is about to run: nothing
    is flushed, saved or cleaned up, as when the kernel's OOM killer or a node failure hits."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillWhenPickled:
    """Kills the process when ``torch.save`` serialises it, i.e. while a checkpoint file is
    being written (the file is already open for writing at that point)."""

    def __reduce__(self) -> NoReturn:  # type: ignore[override]
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


class SigkillWhileSavingAtStep(Callback):
    """``kill -9`` in the middle of writing the first checkpoint saved at ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if trainer.global_step == self.step:
            checkpoint["kill_while_writing"] = KillWhenPickled()


class NanInputsAtStep(Callback):
    """Training step ``step`` sees a batch of NaN images, as with corrupt data or an overflow:
    its loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.step:
            batch[0].fill_(float("nan"))


class RaiseOnRankAtStep(Callback):
    """Rank ``rank`` raises at training step ``step``; every rank writes its process id to
    ``pid_dir/rank<N>.pid`` first, so the test can check that no process outlives the job."""

    def __init__(self, rank: int, step: int, pid_dir: str) -> None:
        self.rank = rank
        self.step = step
        self.pid_dir = Path(pid_dir)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        (self.pid_dir / f"rank{trainer.global_rank}.pid").write_text(str(os.getpid()))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(f"simulated failure on rank {self.rank}")


class MakeDirWhenLoaded:
    """A checkpoint entry that runs code when unpickled (here: creates ``path``), as a
    malicious checkpoint would."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (self.path,)


class SignalAtStep(Callback):
    """Sends ``signal_name`` (e.g. ``SIGTERM``, ``SIGUSR1``) to this process just before training
    step ``step`` runs, as a scheduler would at any moment: the handler runs in the middle of
    the step's hooks, not at a point chosen for it."""

    def __init__(self, signal_name: str, step: int) -> None:
        self.signal = signal.Signals[signal_name]
        self.step = step
        self.sent = False

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signal)


class SignalAtValidationBatch(Callback):
    """Sends ``signal_name`` to this process before validation batch ``batch`` of the validation
    that follows training step ``step`` (e.g. ``SIGINT``: Ctrl+C in the middle of validating)."""

    def __init__(self, signal_name: str, step: int, batch: int) -> None:
        self.signal = signal.Signals[signal_name]
        self.step = step
        self.batch = batch

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if (trainer.global_step == self.step and batch_idx == self.batch
                and not trainer.sanity_checking):
            if self.signal == signal.SIGINT and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
                # A shell without job control starts background jobs (e.g. a CI script run
                # with `&`) with SIGINT ignored, which Python keeps; Ctrl+C in a terminal is
                # never ignored, and that is what this hook stands for.
                signal.signal(signal.SIGINT, signal.default_int_handler)
            os.kill(os.getpid(), self.signal)


class SaveWeightsAtTrainEnd(Callback):
    """Every rank writes its model weights to ``folder/rank<N>.pt`` when training ends: the
    DDP test compares each rank's, not only rank 0's checkpoint."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.state_dict(), self.folder / f"rank{trainer.global_rank}.pt")
