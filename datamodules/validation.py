"""Input checks that run before any training step, in the main process.

Problems are collected, not raised one by one: a user with 40 broken rows wants to see them in one
message (the first few with file and row, and the total), not fix them one run at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

SHOWN_PROBLEMS = 10
# PIL's own decompression-bomb threshold: a header claiming more pixels than this is refused
# before anything is decoded.
DEFAULT_MAX_PIXELS = 89_478_485


def first_problems(messages: Sequence[str]) -> list[str]:
    """The first SHOWN_PROBLEMS messages, indented, and how many more there are."""
    lines = [f"  {m}" for m in messages[:SHOWN_PROBLEMS]]
    if len(messages) > SHOWN_PROBLEMS:
        lines.append(f"  ... and {len(messages) - SHOWN_PROBLEMS} more")
    return lines


@dataclass(frozen=True)
class Problem:
    row: int  # 0-based position in the table, as pandas shows it
    message: str


class DataError(ValueError):
    """Bad input data or data options. train.py reports these as an error message, without a
    traceback: the message names the file, row or option to fix."""


def data_error_in(error: BaseException | None) -> DataError | None:
    """The DataError that ``error`` is, or was raised while handling (jsonargparse wraps an
    error raised while building the data or the model in a ValueError of its own)."""
    while error is not None and not isinstance(error, DataError):
        error = error.__cause__ or error.__context__
    return error


class DataValidationError(DataError):
    """Invalid rows: one error listing the first problems with their rows, and the count; a
    single problem is one line."""

    def __init__(self, source: str, problems: Sequence[Problem], hint: str = "") -> None:
        self.problems = list(problems)
        suffix = f" ({hint})" if hint else ""
        if len(self.problems) == 1:  # the common case gets one line: file, row and problem
            only = self.problems[0]
            super().__init__(f"{source}: 1 invalid row: row {only.row}: {only.message}{suffix}")
            return
        lines = first_problems([f"row {p.row}: {p.message}" for p in self.problems])
        header = f"{source}: {len(self.problems)} invalid row(s)"
        super().__init__("\n".join([header + suffix, *lines]))


def read_bytes(path: str | Path) -> Tensor:
    """A file's bytes as a uint8 tensor, for ``decode_image``.

    Python's buffered read is ~8 µs faster per small image file than ``torchvision.io``'s
    ``read_file`` (11 vs 19 µs for a 64x64 PNG here), 6 % of decoding one; the per-image
    loaders pay it on every sample of every epoch.
    """
    with open(path, "rb") as file:
        data = bytearray(file.read())
    if not data:
        raise RuntimeError(f"{path} is an empty file")
    return torch.frombuffer(data, dtype=torch.uint8)


def load_image(path: str | Path, mode: ImageReadMode) -> Tensor:
    """Decode to a uint8 CHW tensor with the requested channels (16-bit files scaled to 8)."""
    image = decode_image(read_bytes(path), mode=mode)
    if image.dtype != torch.uint8:
        image = TF.to_dtype(image, torch.uint8, scale=True)
    return image


def check_image_file(
    path: Path, root: Path, decode: bool, max_pixels: int = DEFAULT_MAX_PIXELS
) -> str | None:
    """What is wrong with one image file, or None. ``decode`` also catches truncated files."""
    try:
        resolved = path.resolve()
    except OSError as error:
        return f"cannot resolve {path}: {error}"
    if not resolved.is_relative_to(root.resolve()):
        return f"{path} is outside the image root {root}"
    if not resolved.is_file():
        return f"missing image file {path}"
    try:
        with Image.open(resolved) as image:  # reads the header only
            width, height = image.size
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


def check_image_files(
    paths: Sequence[Path], root: Path, decode: bool, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[str | None]:
    """:func:`check_image_file` for many files, on threads (decoding and file reads release the
    GIL); one result per path, in order."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda p: check_image_file(p, root, decode, max_pixels), paths))


def non_finite_feature_problems(table: pd.DataFrame, columns: Sequence[str]) -> list[Problem]:
    """Rows whose feature columns are not numbers, or are NaN / inf."""
    problems = []
    for column in columns:
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        for position in np.flatnonzero(~np.isfinite(values)):
            raw = table[column].iloc[position]
            raw = raw.item() if hasattr(raw, "item") else raw  # nan, not np.float64(nan)
            message = f"feature {column!r} is {raw!r}, not a finite number"
            problems.append(Problem(int(position), message))
    return sorted(problems, key=lambda p: p.row)
