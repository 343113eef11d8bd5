"""Checkpoint files that are either the old one or the complete new one, never half written.

Lightning's ``TorchCheckpointIO`` serialises into memory, writes the bytes to a temporary file
in the *system* temporary folder and ``shutil.move``s it over the target. That rename is atomic
only when ``/tmp`` and the log folder are on the same filesystem; otherwise (``/tmp`` on tmpfs,
logs on a mounted volume or network share, the usual container and cluster set-ups)
``shutil.move`` falls back to copying into the target, so a job killed during the copy leaves a
truncated ``last.ckpt``, and every kill leaves a checkpoint-sized file behind in ``/tmp``.

This plugin writes the temporary file beside the target (same folder, so same filesystem),
flushes it to disk and renames it over the target with ``os.replace``, which is atomic on
POSIX and Windows. A killed process leaves the previous checkpoint intact and at most one
hidden ``.<name>.partial`` file, which the next save of that name overwrites. Remote paths
(``s3://`` ...) keep Lightning's behaviour. ``configs/default.yaml`` lists it in
``trainer.plugins``.
"""

from __future__ import annotations

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
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
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
                # torch.save reports a failed write (a full disk, a quota) as its zip writer's
                # RuntimeError ("unexpected pos"); the OSError behind it says why.
                raise OSError(cause.errno, cause.strerror, str(target)) from error
            raise
        sync_folder(target.parent)
        return None


def sync_folder(folder: Path) -> None:
    """Persist the rename itself (the folder entry); not possible on every OS, so best effort."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
