"""The decoded images of a cache, kept beside the record of checked files so the next run, the
other ranks of a node and the next sweep trial load them (memory-mapped) instead of decoding
again; no library keeps them across processes. On 5,000 28x28 PNGs the data set-up takes 0.11 s
instead of 0.34 s (``benchmarks/decoded_copy.py``). One file per table and read mode, named after
the files' paths, stamps and torchvision version, so a stale copy is never loaded; files that
failed to decode are kept as their messages, so ``skip_invalid`` runs load it too."""

import hashlib
import os
import shutil
from pathlib import Path

import torch
import torchvision
from torch import Tensor

from datamodules.validation import CheckedFiles, cache_folder

Decoded = list[Tensor | str]  # per path: its image, or why it could not be decoded


def copy_path(table: str, read_mode: str, paths: list[Path], stamps: dict[Path, list[int]]
              ) -> Path | None:
    """Where the decoded copy of ``paths`` is kept; None when a file cannot be stat'ed.
    ``stamps``: those the check of this run took (each file is stat'ed once a run)."""
    digest = hashlib.sha1()
    for path in paths:
        stamp = stamps.get(path) or CheckedFiles.stamp(path)
        if stamp is None:
            return None
        digest.update(f"{path}|{stamp}\n".encode())
    table_key = hashlib.sha1(f"{table}|{read_mode}|{torchvision.__version__}".encode())
    return cache_folder() / f"decoded-{table_key.hexdigest()[:16]}-{digest.hexdigest()[:16]}.pt"


def lock_of(path: Path) -> Path:
    """What the ranks take turns on: one name per table and read mode, whatever the contents."""
    return path.with_name(f"decoded-{path.name.split('-')[1]}")


def load_copy(path: Path, count: int) -> Decoded | None:
    """Per path, its image (a view into the memory-mapped file) or its decoding error; None
    when there is no copy or it cannot be read (then the files are decoded)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        images = iter(saved["images"])  # a stacked tensor iterates as views of its images
        failed = dict(saved["failed"])
        decoded: Decoded = [failed[i] if i in failed else next(images) for i in range(count)]
        return decoded if next(images, None) is None else None
    except Exception:  # a copy that is not what this module wrote: decode again
        return None


def save_copy(path: Path, decoded: Decoded) -> int | None:
    """Write the copy atomically, if the disk has room for it twice over, and delete the older
    copies of the same table: its size, or None (no partial file left) where it cannot be."""
    failed = [(i, item) for i, item in enumerate(decoded) if isinstance(item, str)]
    size = sum(item.nbytes for item in decoded if isinstance(item, Tensor))
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(path.parent).free < 2 * size:
            return None
        torch.save({"images": stacked_in_place(decoded), "failed": failed}, partial)
        os.replace(partial, path)
    except (OSError, RuntimeError):
        partial.unlink(missing_ok=True)
        return None
    for older in path.parent.glob(f"{lock_of(path).name}-*"):
        if older != path:
            older.unlink(missing_ok=True)
    return size


def stacked_in_place(decoded: Decoded) -> Tensor | list[Tensor]:
    """Images of one size as one tensor, each entry of ``decoded`` replaced by its view into it
    as it is copied, so memory never holds them twice (``torch.stack`` would); else a list."""
    rows = [i for i, item in enumerate(decoded) if isinstance(item, Tensor)]
    if len({decoded[i].shape for i in rows}) != 1:
        return [decoded[i] for i in rows]
    stacked = torch.empty((len(rows), *decoded[rows[0]].shape), dtype=decoded[rows[0]].dtype)
    for row, i in enumerate(rows):
        stacked[row] = decoded[i]
        decoded[i] = stacked[row]
    return stacked
