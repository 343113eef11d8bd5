"""The decoded images of a cache, kept on disk beside the record of checked files, so the next
run, the other ranks of a node and the next sweep trial load them (memory-mapped) instead of
decoding every file again. Neither torchvision nor torchdata keeps decoded images across
processes: this is the gap it fills.

One file per image root and read mode, named after the files' paths and stamps (size,
modification time, inode): a changed, added or removed file gives another name, so a stale
copy is never loaded; writing a new copy deletes the older ones of that root. On 5,000 28x28
PNGs loading it takes ~10 ms where decoding took ~0.45 s (``benchmarks/user_folder.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor

from datamodules.validation import CheckedFiles, cache_folder


def copy_path(root: Path, read_mode: str, paths: list[Path]) -> Path | None:
    """Where the decoded copy of ``paths`` is kept; None when a file cannot be stat'ed."""
    digest = hashlib.sha1()
    for path in paths:
        stamp = CheckedFiles.stamp(path)
        if stamp is None:
            return None
        digest.update(f"{path}|{stamp}\n".encode())
    root_key = hashlib.sha1(f"{root.resolve()}|{read_mode}".encode()).hexdigest()[:16]
    return cache_folder() / f"decoded-{root_key}-{digest.hexdigest()[:16]}.pt"


def lock_of(path: Path) -> Path:
    """What the ranks take turns on: one name per image root and read mode (see
    :func:`datamodules.validation.one_process_at_a_time`), whatever the copy's contents."""
    return path.with_name(f"decoded-{path.name.split('-')[1]}")


def load_copy(path: Path, count: int) -> list[Tensor] | None:
    """The images of a copy (views into one memory-mapped file), or None when there is none
    or it cannot be read."""
    with contextlib.suppress(OSError, RuntimeError, ValueError, EOFError):
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        images = list(saved.unbind()) if isinstance(saved, Tensor) else list(saved)
        if len(images) == count:
            return images
    return None


def save_copy(path: Path, images: list[Tensor]) -> bool:
    """Write the copy (one tensor when the images share a size), atomically; replace the
    older copies of the same root. Where it cannot be written, nothing is kept (False)."""
    same_size = len({image.shape for image in images}) == 1
    with contextlib.suppress(OSError, RuntimeError):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        torch.save(torch.stack(images) if same_size else images, partial)
        os.replace(partial, path)
        root_key = path.name.split("-")[1]
        for older in path.parent.glob(f"decoded-{root_key}-*.pt"):
            if older != path:
                older.unlink(missing_ok=True)
        return True
    return False
