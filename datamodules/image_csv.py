"""Images listed in an annotations table (CSV or anything pandas reads) next to an image folder:
``labels.csv`` with a path and a label column, as in every PyTorch tutorial. Images are decoded
with ``torchvision.io.decode_image`` (about twice as fast as PIL on small PNGs) into uint8 CHW
tensors, then go through a ``torchvision.transforms.v2`` pipeline."""

import contextlib
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode
from torchvision.transforms import v2

from datamodules.base import (
    TableDataModule,
    check_eval_normalises_like_training,
    read_table,
    targets_tensor,
)
from datamodules.decoded_copy import copy_path, load_copy, lock_of, save_copy, stacked_in_place
from datamodules.samplers import call_with_seed
from datamodules.tasks import empty_cells
from datamodules.validation import (
    DEFAULT_MAX_PIXELS,
    Header,
    Problem,
    check_image_files,
    check_samples_stack,
    load_image,
    one_process_at_a_time,
)
from errors import DataError

log = logging.getLogger(__name__)
ReadMode = Literal["GRAY", "RGB", "UNCHANGED"]
CHANNELS = {"GRAY": 1, "RGB": 3}
MODE_CHANNELS = {"1": 1, "L": 1, "P": 3, "I;16": 1, "I": 1, "LA": 2, "RGB": 3, "RGBA": 4}
# Threads pay off for large images only: 256x256 JPEGs decode 1.8x faster on 2 threads than on
# one, 28x28 PNGs 2x slower on 8 (the per-file work holds the GIL).
LARGE_IMAGE_PIXELS = 128 * 128


def readable(size: float) -> str:
    """A byte count for a message: ``1.4 KB``, ``250.9 MB``, ``4.0 GB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 1e3:.1f} KB"


class ImageCSVDataset(Dataset):
    """Samples from image files: ``(image, target)``, ``(image, mask)`` with ``masks``
    (segmentation), or the image alone (prediction, task none). With ``cache`` (decoded uint8
    images per path: a list, or one ``N x C x H x W`` tensor) no file is opened."""

    def __init__(self, paths: Sequence[Path | str], targets: np.ndarray | None = None,
                 read_mode: ReadMode = "RGB", transform: Callable[..., Any] | None = None,
                 cache: Sequence[Tensor] | Tensor | None = None,
                 masks: Sequence[Path | str] | None = None) -> None:
        self.paths = [p if isinstance(p, Path) else Path(p) for p in paths]  # no re-parsing
        self._files = [str(p) for p in self.paths]  # decode_image takes str: converted once
        self.targets = targets_tensor(targets)
        self.masks = None if masks is None else [str(m) for m in masks]
        if masks is not None:  # segmentation: only its runs import the mask reader
            from datamodules.tasks.segmentation import mask_sample

            self.mask_sample = mask_sample
        self.mode = ImageReadMode[read_mode]
        self.transform = transform
        self.seeded = False  # without a transform nothing is random
        if transform is not None:
            from datamodules.deterministic_transforms import is_deterministic

            self.seeded = not is_deterministic(transform)
        self.cache = cache
        # Nothing left to read or compute per sample: the loader needs no workers (base.py).
        self.ready_in_memory = cache is not None and transform is None and masks is None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        image = self.cache[index] if self.cache is not None else load_image(self._files[index],
                                                                           self.mode)
        # Seeded per draw by the training sampler, so augmentation does not depend on worker
        # count or lifetime (datamodules.samplers.SeededIndex).
        seed = getattr(index, "seed", None) if self.seeded else None
        if self.masks is not None:
            return self.mask_sample(self, index, image, seed)
        if self.transform is not None:
            image = call_with_seed(self.transform, image, seed=seed)
        return image if self.targets is None else (image, self.targets[index])


class ImageCSVDataModule(TableDataModule):
    """Train/val/test loaders over an annotations table and an image folder.

    Args:
        annotations: table with one row per image (``.csv``, ``.tsv``, ``.parquet``, ``.json``).
        image_root: folder the paths are relative to (default: the table's); none may leave it.
        path_column: column with the image paths.
        read_mode: ``GRAY`` (1 channel), ``RGB`` (3) or ``UNCHANGED`` (as stored), as uint8.
        train_transforms / eval_transforms: ``torchvision.transforms.v2`` pipelines on uint8
            CHW images (eval: validation and test); without them, float32 in [0, 1].
        validate_images: ``full`` decodes every image before training, ``header`` checks the
            file exists, is an image and its size, ``off`` checks nothing.
        max_pixels: images whose header claims more pixels are refused (decompression bombs).
        remember_checks: record which files passed (``~/.cache/lightning-template/``) and check
            only changed ones next time; with ``cache_images``, keep the decoded images there.
        cache_images: decode every image once into memory (deterministic per-image transforms
            run once, into the cache); ``auto``: if it fits ``cache_max_gb`` and a quarter of
            the memory per process, said in one line.
        cache_max_gb: the most a cache may take; ``true`` is refused (with the size) above it.
        predict_path: what ``predict`` runs on: a folder of images (recursively) or a table
            whose ``path_column`` lists them (relative to ``image_root`` if given, else to the
            table's folder); unreadable images are reported and skipped.
        **kwargs: options of :class:`~datamodules.base.TableDataModule`.
    """

    def __init__(
        self,
        annotations: str | Path,
        image_root: str | Path | None = None,
        path_column: str = "path",
        read_mode: ReadMode = "RGB",
        train_transforms: v2.Transform | None = None,
        eval_transforms: v2.Transform | None = None,
        validate_images: Literal["full", "header", "off"] = "full",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        remember_checks: bool = True,
        cache_images: bool | Literal["auto"] = "auto",
        cache_max_gb: float = 4.0,
        predict_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["train_transforms", "eval_transforms",
                                          "train_batch_transforms", "eval_batch_transforms",
                                          "class_names"])
        self.annotations = Path(annotations)
        self.image_root = Path(image_root) if image_root is not None else self.annotations.parent
        self.predict_path = Path(predict_path) if predict_path is not None else None
        self.predict_problems: list[tuple[Path, str]] = []  # (path, why) of skipped images
        self.path_column = path_column
        self.read_mode = read_mode
        # Without transforms images still reach the model as floats in [0, 1]; with batch
        # transforms the loader yields uint8 and the conversion is theirs, on the device.
        to_float = v2.ToDtype(torch.float32, scale=True)
        self.train_transforms = train_transforms or (
            None if self.train_batch_transforms else to_float)
        self.eval_transforms = eval_transforms or (None if self.eval_batch_transforms else to_float)
        check_eval_normalises_like_training(
            type(self).__name__, [self.train_transforms, self.train_batch_transforms],
            [self.eval_transforms, self.eval_batch_transforms])
        self.validate_images = validate_images
        self.max_pixels = max_pixels
        self.remember_checks = remember_checks
        self.cache_images = cache_images
        self.cache_max_gb = cache_max_gb
        self._cache: dict[Path, Tensor] = {}
        self._headers: dict[Path, Header] = {}  # size and mode of each checked file
        self._stamps: dict[Path, list[int]] = {}  # each file's stat when checked (remember)
        self._joined: dict[str, Path] = {}  # image_root / path, per path in the table
        self._preprocessing: dict[str, Any] | None = None

    @property
    def source(self) -> str:
        return str(self.annotations)

    def load_table(self) -> pd.DataFrame:
        return read_table(self.annotations)

    def required_columns(self) -> list[str]:
        return [self.path_column, *super().required_columns()]

    @property
    def in_channels(self) -> int | None:
        return CHANNELS.get(self.read_mode)

    @property
    def input_column(self) -> str:
        return self.path_column

    def mask_paths(self, table: pd.DataFrame) -> list[Path] | None:
        if self.mask_column is None:
            return None
        return [self.image_root / str(p) for p in table[self.mask_column]]

    def image_paths(self, table: pd.DataFrame) -> list[Path]:
        # Each path is joined once for the checks, the splits and the cache (a Path join costs
        # ~7 us: 0.4 s a run on 5,000 images, benchmarks/user_folder.py).
        joined = self._joined
        return [joined[p] if p in joined else joined.setdefault(p, self.image_root / p)
                for p in map(str, table[self.path_column])]

    def row_problems(self, table: pd.DataFrame) -> list[Problem]:
        """Files that are missing, outside ``image_root``, too large or do not decode. The cache
        is decided and filled here too: decoding every image is also the full check."""
        paths = self.image_paths(table)
        problems: list[Problem] = []

        def keep_good(rows: list[int], issues: Sequence[str | None]) -> list[int]:
            """Record each row's issue (one per row, None: no issue); the rows without one."""
            problems.extend(Problem(row, msg) for row, msg in zip(rows, issues, strict=True)
                            if msg)
            return [row for row, msg in zip(rows, issues, strict=True) if not msg]

        rows = keep_good(list(range(len(paths))), [
            f"no path in column {self.path_column!r}" if empty else None
            for empty in empty_cells(table, self.path_column)])
        if self.validate_images != "off":
            # Headers only where a cache will decode every image anyway, or may (auto).
            decode = self.validate_images == "full" and self.cache_images is False
            rows = keep_good(rows, check_image_files(
                [paths[r] for r in rows], self.image_root, decode, self.max_pixels, self._headers,
                self.remember_checks, self._stamps))
            masks = self.mask_paths(table)
            if masks is not None:
                from datamodules.tasks.segmentation import check_masks

                rows = keep_good(rows, check_masks(
                    [paths[r] for r in rows], [masks[r] for r in rows], self.image_root,
                    len(self.class_names or []), self.ignore_index))
        good = [paths[r] for r in rows]
        if self.cache_images == "auto":
            from datamodules.cache_budget import cache_decision

            self.cache_images, undecodable = cache_decision(self, good, rows)
            problems += undecodable
        elif self.cache_images:
            needed = self.cached_bytes(good)
            if needed > self.cache_max_gb * 1e9:
                raise DataError(
                    f"{self.source}: caching {len(good)} images needs "
                    f"{needed / 1e9:.1f} GB, more than cache_max_gb={self.cache_max_gb}; set "
                    "cache_images: false or raise cache_max_gb")
            log.info("caching %d images (%.1f MB)", len(good), needed / 1e6)
        if self.cache_images:
            problems += self.fill_cache(good, rows)
        return sorted(problems, key=lambda p: p.row)

    def cached_bytes(self, paths: list[Path]) -> int:
        """What caching ``paths`` takes: the decoded uint8 images and, where a deterministic
        per-image transform runs once into the cache (build_dataset), what it makes of them
        (``Resize(224)`` + ``ToDtype`` turn a 28x28 gray digit of 784 bytes into 200,704): a
        split's decoded images stay until its transformed copy is made."""
        shapes: Counter[tuple[int, int, int]] = Counter()
        for path in paths:
            if path in self._headers:
                width, height, mode = self._headers[path]
            else:  # validate_images: off read no header
                from PIL import Image

                with Image.open(path) as image:
                    (width, height), mode = image.size, image.mode
            shapes[CHANNELS.get(self.read_mode, MODE_CHANNELS.get(mode, 4)), height, width] += 1
        decoded = sum(count * math.prod(shape) for shape, count in shapes.items())
        transforms = [t for t in (self.train_transforms, self.eval_transforms) if t is not None]
        if not transforms or self.mask_column is not None:  # masks: transformed per sample
            return decoded
        from datamodules.deterministic_transforms import transformed_bytes

        return decoded + transformed_bytes(transforms, shapes)

    def fill_cache(self, paths: list[Path], rows: list[int]) -> list[Problem]:
        """Decode every image once, in this (main) process; workers share the tensors. With
        ``remember_checks``, unchanged files come from the copy an earlier run or another rank
        of this node kept (:mod:`datamodules.decoded_copy`); the ranks take turns."""
        copy = (copy_path(self.source, self.read_mode, paths, self._stamps)
                if self.remember_checks else None)
        with (one_process_at_a_time(lock_of(copy), f"decoding the images of {self.source}")
              if copy is not None else contextlib.nullcontext()):
            decoded = load_copy(copy, len(paths)) if copy is not None else None
            if decoded is None:
                decoded = self.decode(paths)
                if copy is not None and (size := save_copy(copy, decoded)) is not None:
                    rank_zero_info(f"{self.source}: kept the decoded images in {copy} "
                                   f"({readable(size)}) for the next run (remember_checks)")
        self._cache.update((p, i) for p, i in zip(paths, decoded, strict=True)
                           if isinstance(i, Tensor))
        return [Problem(row, i) for row, i in zip(rows, decoded, strict=True) if isinstance(i, str)]

    def decode(self, paths: list[Path]) -> list[Tensor | str]:
        """Each file's image, or why it cannot be read."""
        def decode(path: Path) -> Tensor | str:
            try:
                return load_image(path, ImageReadMode[self.read_mode])
            except OSError as error:  # validate_images: off lets missing files reach here
                return f"cannot read {path}: {error.strerror or error}"
            except RuntimeError as error:
                return f"cannot decode {path} (truncated or corrupt): {str(error).splitlines()[0]}"

        sizes = [self._headers[p][0] * self._headers[p][1] for p in paths if p in self._headers]
        large = not sizes or sum(sizes) / len(sizes) >= LARGE_IMAGE_PIXELS
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1) if large else 1) as pool:
            return list(pool.map(decode, paths))

    def build_dataset(self, split: str, table: pd.DataFrame, targets: np.ndarray | None
                      ) -> Dataset:
        paths = self.image_paths(table)
        transform = self.train_transforms if split == "train" else self.eval_transforms
        cache = self.split_cache(paths) if self.cache_images else None
        masks = self.mask_paths(table)
        if cache is not None and masks is None and transform is not None:
            from datamodules.deterministic_transforms import transformed_cache

            cache, transform = transformed_cache(cache, transform, paths, self._cache)
        return ImageCSVDataset(paths, targets, self.read_mode, transform, cache, masks=masks)

    def split_cache(self, paths: list[Path]) -> list[Tensor] | Tensor:
        """A split's cached images as one ``N x C x H x W`` tensor when they share a size (a
        batch is then one gather), else a list. The cache keeps a view of each image moved into
        the stack, so memory holds one copy, never two."""
        images = [self._cache.pop(path) for path in paths]  # the only reference while stacked
        stacked = stacked_in_place(images)
        self._cache.update(zip(paths, images, strict=True))
        return stacked

    def check_batches_stack(self, table: pd.DataFrame, split_rows: dict[str, np.ndarray]
                            ) -> None:
        """Each split's images, through its transforms, must stack into batches."""
        if self.batch_size == 1 or not self._headers:  # validate_images: off reads no header
            return
        for split, rows in split_rows.items():
            part = table.iloc[rows]
            paths = self.image_paths(part)
            cache = [self._cache[p] for p in paths] if self.cache_images else None
            name = "train_transforms" if split == "train" else "eval_transforms"
            probe = ImageCSVDataset(paths, None, self.read_mode, getattr(self, name), cache,
                                    masks=self.mask_paths(part))
            check_samples_stack(probe, paths, self._headers, self.source, name)

    def build_predict_dataset(self) -> Dataset:
        from datamodules.image_predict import predict_dataset

        return predict_dataset(self)

    def preprocessing(self) -> dict[str, Any] | None:
        """How a file becomes the model's input, for exported models; None before setup."""
        if self._preprocessing is None:
            from datamodules.image_export import preprocessing  # saving a checkpoint only

            self._preprocessing = preprocessing(self)
        return self._preprocessing
