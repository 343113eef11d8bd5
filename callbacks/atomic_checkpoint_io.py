"""Checkpoint files that are either the old one or the complete new one, never half written.

Lightning's ``TorchCheckpointIO`` writes to the system temporary folder and ``shutil.move``s the
file over the target: a copy, not an atomic rename, when ``/tmp`` is another filesystem (tmpfs,
logs on a mounted volume), so a job killed mid-copy leaves a truncated ``last.ckpt``. Here the
file is written beside the target, flushed to disk and renamed with ``os.replace`` (atomic on
POSIX and Windows); a kill leaves at most a hidden ``.<name>.partial`` file, overwritten later.
"""

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def partial_path(path: Path) -> Path:
    """Where a checkpoint is written before it is renamed to ``path``."""
    return path.with_name(f".{path.name}.partial")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are write-beside, fsync, then atomic rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike[str],
                        storage_options: Any | None = None) -> None:
        if "://" in str(path) or storage_options is not None:  # remote (s3:// ...): Lightning's
            return super().save_checkpoint(checkpoint, path, storage_options)  # (or its error)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = partial_path(target)
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())  # the bytes are on disk before the name points at them
            os.replace(temporary, target)
        except BaseException as error:
            temporary.unlink(missing_ok=True)
            cause = error.__context__
            if isinstance(error, RuntimeError) and isinstance(cause, OSError):
                # torch.save reports a failed write (a full disk) as its zip writer's
                # RuntimeError ("unexpected pos"); the OSError behind it says why.
                raise OSError(cause.errno, cause.strerror, str(target)) from error
            raise
        with contextlib.suppress(OSError):  # persist the rename too, where the OS allows it
            folder = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
