"""Input checks that run before any training step, in the main process. Problems are collected,
not raised one by one: a user with 40 broken rows sees them in one message, not one a run."""

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from errors import DataError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's decompression-bomb threshold
PARALLEL_AFTER = 4096  # from this many files on, checked in forked processes (many_files.py)
MAX_STACK_PROBES = 16
Header = tuple[int, int, str]  # width, height and PIL mode, as the file's header states them


@dataclass(frozen=True)
class Problem:
    row: int  # 0-based position in the table, as pandas shows it
    message: str


class DataValidationError(DataError):
    """Invalid rows: the first problems with their rows, and the count; one problem is one line."""

    def __init__(self, source: str, problems: Sequence[Problem], hint: str = "") -> None:
        from datamodules.bad_rows import problems_message  # raised on bad input only

        self.problems = list(problems)
        super().__init__(problems_message(source, self.problems, hint))


def load_image(path: str | Path, mode: ImageReadMode) -> Tensor:
    """Decode to a uint8 CHW tensor with the requested channels (16-bit files scaled to 8).
    Read by Python: a missing or unreadable file is an ``OSError`` that names it."""
    with open(path, "rb") as file:
        data = bytearray(file.read())
    if not data:
        raise RuntimeError(f"{path} is an empty file")
    image = decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=mode)
    return image if image.dtype == torch.uint8 else TF.to_dtype(image, torch.uint8, scale=True)


def check_image_file(
    path: Path, root: Path, decode: bool, max_pixels: int = DEFAULT_MAX_PIXELS,
    headers: dict[Path, Header] | None = None,
) -> str | None:
    """What is wrong with one image file, or None. ``decode`` also catches truncated files.
    ``headers`` collects each readable file's size and mode, for :func:`check_samples_stack`."""
    try:
        resolved = path.resolve()
    except OSError as error:
        return f"cannot resolve {path}: {error}"
    if not resolved.is_relative_to(root.resolve()):
        # A link inside the root (or a linked folder on the way) is named as one.
        link = next((p for p in (path, *path.parents) if p.is_symlink()), None)
        via = f" (a symlink to {resolved})" if link is not None else ""
        return f"{path}{via} is outside the image root {root}"
    if not resolved.is_file():
        return f"missing image file {path}"
    try:
        with Image.open(resolved) as image:  # reads the header only
            width, height = image.size
            if headers is not None:
                headers[path] = (width, height, image.mode)
    except Image.DecompressionBombError as error:
        return f"{path} is refused as a decompression bomb: {error}"
    except (UnidentifiedImageError, OSError):
        return f"not an image file {path}"
    if width * height > max_pixels:
        return f"{path} is {width}x{height} pixels, over the limit of {max_pixels} (max_pixels)"
    if decode:
        try:
            decode_image(str(resolved))
        except RuntimeError as error:
            return f"cannot decode {path} (truncated or corrupt): {str(error).splitlines()[0]}"
    return None


def check_chunk(chunk: list[Path], root: Path, decode: bool, max_pixels: int
                ) -> list[tuple[str | None, Header | None]]:
    """:func:`check_image_file` for each path: its problem and its header (size, mode)."""
    out = []
    for path in chunk:
        header: dict[Path, Header] = {}
        out.append((check_image_file(path, root, decode, max_pixels, header), header.get(path)))
    return out


def check_image_files(
    paths: Sequence[Path], root: Path, decode: bool, max_pixels: int, headers: dict[Path, Header],
    remember: bool = False, stamps: dict[Path, list[int]] | None = None,
) -> list[str | None]:
    """:func:`check_image_file` for many files (each header into ``headers``); one result per
    path, in order.

    ``remember``: files a :class:`CheckedFiles` record says passed, unchanged, are not opened;
    those that pass now are recorded. The ranks of a node (torchrun starts them together) take
    turns, so the first checks and the others find its record. ``stamps`` gets each file's
    stamp, so later steps of the run (the decoded copy's name) need not stat it again."""
    with (one_process_at_a_time(CheckedFiles.location(root, max_pixels),
                                f"checking the image files under {root}")
          if remember else contextlib.nullcontext()):
        record = CheckedFiles(root, max_pixels) if remember else None
        todo: list[tuple[int, list[int] | None]] = []  # (index, stamp) of files to open
        for index, path in enumerate(paths):
            stamp = record.stamp(path) if record is not None else None
            known = record.passed(path, stamp, decode) if record is not None else None
            if stamps is not None and stamp is not None:
                stamps[path] = stamp
            if known is not None:
                headers[path] = known
            else:
                todo.append((index, stamp))
        unknown = [paths[i] for i, _ in todo]
        if len(unknown) < PARALLEL_AFTER:
            checked = check_chunk(unknown, root, decode, max_pixels)
        else:
            from datamodules.many_files import check_many

            checked = check_many(unknown, root, decode, max_pixels)
        results: list[str | None] = [None] * len(paths)
        for (index, stamp), (problem, header) in zip(todo, checked, strict=True):
            results[index] = problem
            if header is not None:
                headers[paths[index]] = header
                if record is not None and problem is None and stamp is not None:
                    record.add(paths[index], stamp, header, decode)
        if record is not None:
            record.save()
    return results


def cache_folder() -> Path:
    """Where the template remembers image files (under ``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lightning-template"


class CheckedFiles:
    """Which image files passed the checks, by path, size, modification time and inode, so an
    unchanged data set is not decoded again on the next run, rank or sweep trial; no library
    keeps this. One JSON file per image root and ``max_pixels`` in :func:`cache_folder`; where
    it cannot be written, the checks simply run every time."""

    def __init__(self, root: Path, max_pixels: int) -> None:
        self.path = self.location(root, max_pixels)
        self.entries: dict[str, list[Any]] = {}
        self.changed = False
        with contextlib.suppress(OSError, ValueError):
            self.entries = json.loads(self.path.read_text())

    @staticmethod
    def location(root: Path, max_pixels: int) -> Path:
        key = hashlib.sha1(f"{root.resolve()}|{max_pixels}".encode()).hexdigest()[:16]
        return cache_folder() / f"checked-{key}.json"

    @staticmethod
    def stamp(path: Path) -> list[int] | None:
        try:
            info = path.stat()  # a symlink: its target, whose contents are read
        except OSError:
            return None
        return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]

    def passed(self, path: Path, stamp: list[int] | None, decode: bool) -> Header | None:
        """The header of a file that passed (decoded, if ``decode``) and has not changed."""
        entry = self.entries.get(str(path))
        if stamp is None or entry is None or entry[0] != stamp or (decode and not entry[2]):
            return None
        return tuple(entry[1])  # type: ignore[return-value]

    def add(self, path: Path, stamp: list[int], header: Header, decoded: bool) -> None:
        self.entries[str(path)] = [stamp, list(header), decoded]
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
            partial.write_text(json.dumps(self.entries))
            os.replace(partial, self.path)  # ranks writing at once: the last whole file wins


@contextlib.contextmanager
def one_process_at_a_time(record: Path, what: str) -> Iterator[None]:
    """An exclusive ``flock`` on a file beside ``record`` for the block, released when the
    process ends however it ends; a process that waits says so, naming ``what`` the other does.
    Where no lock can be taken (Windows, a read-only cache folder, no ``flock``) it runs
    unlocked."""
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError, ImportError):
            import fcntl

            record.parent.mkdir(parents=True, exist_ok=True)
            lock = stack.enter_context(open(record.with_suffix(".lock"), "a"))
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                rank_zero_info(f"waiting for another process of this node {what} "
                               f"(lock: {lock.name})")
                fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def check_samples_stack(dataset: Any, paths: Sequence[Path], headers: dict[Path, Header],
                        source: str, transforms: str) -> None:
    """Refuse, before step 1, images that would not stack into a batch after the transforms
    (the default collate would fail mid-epoch naming no file). One sample goes through per
    distinct header (size, mode); over MAX_STACK_PROBES, the smallest and largest per mode."""
    first: dict[Header, int] = {}
    for index, path in enumerate(paths):
        if path in headers:
            first.setdefault(headers[path], index)
    probes = list(first.items())
    if len(probes) > MAX_STACK_PROBES:
        from datamodules.mixed_sizes import extremes

        probes = extremes(probes)
    seen: dict[tuple, tuple[Header, int]] = {}
    with torch.random.fork_rng(devices=[]):  # a probe must not move the seeded random state
        for header, index in probes:
            try:
                item = dataset[index]
            except (RuntimeError, ValueError, TypeError) as error:  # e.g. a crop larger than it
                raise DataError(f"{source}: {paths[index]} ({header[0]}x{header[1]} {header[2]}) "
                                f"fails in the {transforms}: {str(error).splitlines()[0]}"
                                ) from error
            shapes = tuple(tuple(t.shape) for t in (item if isinstance(item, tuple) else (item,))
                           if isinstance(t, Tensor))
            seen.setdefault(shapes, (header, index))
    if len(seen) > 1:
        from datamodules.mixed_sizes import refuse_unstackable

        refuse_unstackable(seen, paths, source, transforms)
