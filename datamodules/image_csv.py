"""Images listed in an annotations table (CSV or anything pandas reads) next to an image folder.

This is the shape every PyTorch tutorial uses for custom data: ``labels.csv`` with a path column
and a label column, paths relative to an image root. Images are decoded with
``torchvision.io.decode_image`` (about twice as fast as PIL on small PNGs) into uint8 CHW tensors
and then go through a ``torchvision.transforms.v2`` pipeline.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode
from torchvision.transforms import v2

from datamodules.base import TableDataModule, read_table, targets_tensor
from datamodules.batch_transforms import flatten_transforms
from datamodules.decoded_copy import copy_path, load_copy, lock_of, save_copy
from datamodules.samplers import call_with_seed
from datamodules.validation import (
    DEFAULT_MAX_PIXELS,
    Header,
    Problem,
    check_image_files,
    check_samples_stack,
    first_problems,
    load_image,
    one_process_at_a_time,
)
from errors import DataError

log = logging.getLogger(__name__)
ReadMode = Literal["GRAY", "RGB", "UNCHANGED"]
Validation = Literal["full", "header", "off"]
CHANNELS = {"GRAY": 1, "RGB": 3}
LARGE_IMAGE_PIXELS = 128 * 128
MODE_CHANNELS = {"1": 1, "L": 1, "P": 3, "I;16": 1, "I": 1, "LA": 2, "RGB": 3, "RGBA": 4}
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".json")
# Files a predict folder contributes. Formats torchvision cannot decode (BMP, TIFF) are listed
# anyway, so they are reported as unreadable instead of silently left out.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")


# v2 transforms whose output depends on the input alone: they draw no seed, and with a cache
# they run once per image instead of every epoch. Anything else (Random*, AutoAugment, your own
# classes) counts as random.
DETERMINISTIC = (v2.ToDtype, v2.Normalize, v2.Resize, v2.CenterCrop, v2.Pad, v2.Grayscale,
                 v2.ToImage, v2.ToPureTensor, v2.Identity, torch.nn.Identity)


def is_deterministic(transform: Any) -> bool:
    """True for None and for (nested) ``Compose`` pipelines of DETERMINISTIC steps only."""
    if transform is None:
        return True
    if isinstance(transform, v2.Compose):
        return all(is_deterministic(step) for step in transform.transforms)
    return isinstance(transform, DETERMINISTIC)


def readable(size: float) -> str:
    """A byte count for a message: ``1.4 KB``, ``250.9 MB``, ``4.0 GB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 1e3:.1f} KB"


class ImageCSVDataset(Dataset):
    """Samples from a list of image files: ``(image, target)``, ``(image, mask)`` with
    ``masks`` (segmentation), or the image alone when there are neither (prediction, task
    none). ``targets`` may hold class indices, multi-hot rows or regression values.

    With ``cache`` (decoded uint8 images, one per path: a list, or one ``N x C x H x W`` tensor
    when they all have the same size) no image file is opened at all.
    """

    def __init__(
        self,
        paths: Sequence[Path | str],
        targets: np.ndarray | None = None,
        read_mode: ReadMode = "RGB",
        transform: Callable[..., Any] | None = None,
        cache: Sequence[Tensor] | Tensor | None = None,
        masks: Sequence[Path | str] | None = None,
    ) -> None:
        self.paths = [p if isinstance(p, Path) else Path(p) for p in paths]  # no re-parsing
        self._files = [str(p) for p in self.paths]  # decode_image takes str: convert once
        self.targets = targets_tensor(targets)
        self.masks = [str(m) for m in masks] if masks is not None else None
        if masks is not None:  # segmentation: only its runs import the task's mask reader
            from datamodules.tasks.segmentation import load_mask

            self.load_mask = load_mask
        self.mode = ImageReadMode[read_mode]
        self.transform = transform
        self.seeded = not is_deterministic(transform)  # a deterministic pipeline draws no seed
        self.cache = cache
        # Nothing left to read or compute per sample: the loader needs no workers (base.py).
        self.ready_in_memory = cache is not None and transform is None and masks is None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        image = self.cache[index] if self.cache is not None else load_image(self._files[index],
                                                                           self.mode)
        # Seeded per draw by the training sampler (seed, epoch, position), so augmentation
        # does not depend on worker count or lifetime: see datamodules.samplers.SeededIndex.
        seed = getattr(index, "seed", None) if self.seeded else None
        if self.masks is not None:
            # One call on both: a random crop or flip moves the mask with the image (v2 applies
            # geometric transforms to tv_tensors.Mask with nearest interpolation, and leaves
            # masks out of colour, dtype and normalisation steps).
            mask = tv_tensors.Mask(self.load_mask(self.masks[index]))
            if self.transform is not None:
                image, mask = call_with_seed(self.transform, image, mask, seed=seed)
            return image, mask.as_subclass(Tensor)
        if self.transform is not None:
            image = call_with_seed(self.transform, image, seed=seed)
        return image if self.targets is None else (image, self.targets[index])


class ImageCSVDataModule(TableDataModule):
    """Train/val/test loaders over an annotations table and an image folder.

    Args:
        annotations: table with one row per image (``.csv``, ``.tsv``, ``.parquet``, ``.json``).
        image_root: folder the paths are relative to; defaults to the table's folder. Paths that
            resolve outside it (``../``, absolute paths elsewhere) are refused.
        path_column: column with the image paths.
        read_mode: ``GRAY`` (1 channel), ``RGB`` (3) or ``UNCHANGED`` (as stored). Gray, RGBA
            and 16-bit files are all converted to this, as uint8.
        train_transforms / eval_transforms: ``torchvision.transforms.v2`` pipelines on uint8
            CHW tensors, per image; the eval one is used for validation and test. Without them
            images become float32 in [0, 1].
        validate_images: ``full`` decodes every image before training (catches truncated
            files), ``header`` only checks the file exists, is an image and its size, ``off``
            checks nothing (broken files then fail inside a loader worker).
        max_pixels: images whose header claims more pixels are refused (decompression bombs).
        remember_checks: record which files passed (by size, modification time and inode, in
            ``~/.cache/lightning-template/``) and check only new or changed ones next time;
            with ``cache_images``, also keep the decoded images there, so the next run and
            the other ranks of a node load them instead of decoding (one copy per table,
            the size of the cache, replaced when the files change).
        cache_images: decode every image once, in the main process, and keep the tensors in
            memory: no file is opened while training, and deterministic per-image transforms
            run once, into the cache. ``auto`` caches when the decoded images fit the budget
            (``cache_max_gb``, at most a quarter of the machine's memory per process), saying
            which in one line.
        cache_max_gb: the most a cache may take; ``true`` is refused (with the size) above it.
        predict_path: what ``predict`` runs on: a folder (every image file in it, recursively,
            in sorted order) or a table whose ``path_column`` lists the images, relative to
            ``image_root`` if given, else to the table's folder. Unreadable images are reported
            with their paths and skipped.
        **kwargs: split, sampler, loader and batch-transform options of
            :class:`~datamodules.base.TableDataModule`.
    """

    def __init__(
        self,
        annotations: str | Path,
        image_root: str | Path | None = None,
        path_column: str = "path",
        read_mode: ReadMode = "RGB",
        train_transforms: v2.Transform | None = None,
        eval_transforms: v2.Transform | None = None,
        validate_images: Validation = "full",
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
        self.explicit_image_root = image_root is not None
        self.predict_path = Path(predict_path) if predict_path is not None else None
        self.predict_problems: list[tuple[Path, str]] = []  # (path, why) of skipped images
        self.path_column = path_column
        self.read_mode = read_mode
        # Without any transforms images still reach the model as floats in [0, 1]; with batch
        # transforms the loader yields uint8 and the conversion is theirs to do, on the device.
        to_float = v2.ToDtype(torch.float32, scale=True)
        self.train_transforms = train_transforms or (
            None if self.train_batch_transforms else to_float)
        self.eval_transforms = eval_transforms or (None if self.eval_batch_transforms else to_float)
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

    def mask_paths(self, table: pd.DataFrame) -> list[Path] | None:
        if self.mask_column is None:
            return None
        return [self.image_root / str(p) for p in table[self.mask_column]]

    @property
    def input_column(self) -> str:
        return self.path_column

    def image_paths(self, table: pd.DataFrame) -> list[Path]:
        # The checks, each split and the cache join the same rows: each is joined once (a
        # Path join costs ~7 us; 0.4 s a run on 5,000 images, benchmarks/user_folder.py).
        joined = self._joined
        return [joined[p] if p in joined else joined.setdefault(p, self.image_root / p)
                for p in map(str, table[self.path_column])]

    def row_problems(self, table: pd.DataFrame) -> list[Problem]:
        paths = self.image_paths(table)
        problems = []
        if self.validate_images != "off":
            # Headers only where a cache will decode every image anyway, or may (auto).
            decode = self.validate_images == "full" and self.cache_images is False
            issues = check_image_files(paths, self.image_root, decode, self.max_pixels,
                                       self._headers, self.remember_checks, self._stamps)
            problems = [Problem(row, msg) for row, msg in enumerate(issues) if msg]
            masks = self.mask_paths(table)
            if masks is not None:
                from datamodules.tasks.segmentation import check_masks

                bad_rows = {p.row for p in problems}
                rows = [r for r in range(len(paths)) if r not in bad_rows]
                issues = check_masks([paths[r] for r in rows], [masks[r] for r in rows],
                                     self.image_root, len(self.class_names or []),
                                     self.ignore_index)
                problems += [Problem(row, msg) for row, msg in zip(rows, issues, strict=True)
                             if msg]
        bad_rows = {p.row for p in problems}
        rows = [r for r in range(len(paths)) if r not in bad_rows]
        good = [paths[r] for r in rows]
        if self.cache_images == "auto":
            self.cache_images = self.cache_decision(good)
            if not self.cache_images and self.validate_images == "full":
                issues = check_image_files(good, self.image_root, True, self.max_pixels,
                                           remember=self.remember_checks)
                problems += [Problem(row, msg) for row, msg in zip(rows, issues, strict=True)
                             if msg]
        elif self.cache_images:
            self.check_cache_fits(good)
        if self.cache_images:
            problems += self.fill_cache(good, rows)
        return sorted(problems, key=lambda p: p.row)

    def cached_bytes(self, paths: list[Path]) -> int:
        """What caching ``paths`` takes: decoded sizes from the headers, in uint8, or float32
        where a deterministic transform will be applied in the cache (see build_dataset)."""
        from PIL import Image

        needed = 0
        for path in paths:
            if path in self._headers:
                width, height, mode = self._headers[path]
            else:  # validate_images: off read no header
                with Image.open(path) as image:
                    (width, height), mode = image.size, image.mode
            needed += width * height * CHANNELS.get(self.read_mode, MODE_CHANNELS.get(mode, 4))
        floats = any(t is not None and is_deterministic(t) and any(
            isinstance(step, v2.ToDtype) for step in flatten_transforms(t))
            for t in (self.train_transforms, self.eval_transforms))
        return needed * (4 if floats else 1)

    def cache_decision(self, paths: list[Path]) -> bool:
        """``cache_images: auto``: cache when the decoded images fit the budget, the smaller of
        ``cache_max_gb`` and a quarter of this machine's memory per process on it; said in one
        line either way."""
        needed, budget = self.cached_bytes(paths), self.cache_max_gb * 1e9
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        with contextlib.suppress(ValueError, OSError, AttributeError):  # no sysconf: Windows
            budget = min(budget, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4
                         / processes)
        cache = needed <= budget
        rank_zero_info(f"{self.source}: cache_images: auto: "
                       f"{'caching' if cache else 'not caching'} {len(paths)} images "
                       f"({readable(needed)} decoded, {'within' if cache else 'over'} the "
                       f"{readable(budget)} budget)"
                       + ("" if cache else "; set cache_images: true to force it"))
        return cache

    def fill_cache(self, paths: list[Path], rows: list[int]) -> list[Problem]:
        """Decode every image once, in this (main) process; workers share the tensors. With
        ``remember_checks``, the images of unchanged files (and the errors of those that did
        not decode) come from the copy kept by an earlier run or another rank of this node
        (:mod:`datamodules.decoded_copy`); the ranks take turns, so a node decodes once."""
        copy = (copy_path(self.source, self.read_mode, paths, self._stamps)
                if self.remember_checks else None)
        if copy is None:
            decoded = self.decode(paths)
        else:
            with one_process_at_a_time(lock_of(copy), f"decoding the images of {self.source}"):
                decoded = load_copy(copy, len(paths)) if copy.is_file() else None
                if decoded is None:
                    decoded = self.decode(paths)
                    if save_copy(copy, decoded):
                        size = sum(i.nbytes for i in decoded if isinstance(i, Tensor))
                        rank_zero_info(f"{self.source}: kept the decoded images in {copy} "
                                       f"({readable(size)}) for the next run (remember_checks)")
        problems = []
        for row, path, image in zip(rows, paths, decoded, strict=True):
            if isinstance(image, str):
                problems.append(Problem(row, image))
            else:
                self._cache[path] = image
        return problems

    def decode(self, paths: list[Path]) -> list[Tensor | str]:
        """Each file's image, or why it cannot be read."""
        def decode(path: Path) -> Tensor | str:
            try:
                return load_image(path, ImageReadMode[self.read_mode])
            except OSError as error:  # validate_images: off lets missing files reach here
                return f"cannot read {path}: {error.strerror or error}"
            except RuntimeError as error:
                return f"cannot decode {path} (truncated or corrupt): {str(error).splitlines()[0]}"

        # Threads pay off for large images only: 256x256 JPEGs decode 1.8x faster on 2 threads
        # than on one, 28x28 PNGs 2x slower on 8 (the per-file work holds the GIL).
        sizes = [self._headers[p][0] * self._headers[p][1] for p in paths if p in self._headers]
        large = not sizes or sum(sizes) / len(sizes) >= LARGE_IMAGE_PIXELS
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1) if large else 1) as pool:
            return list(pool.map(decode, paths))

    def check_cache_fits(self, paths: list[Path]) -> None:
        """``cache_images: true``: refuse, with the size, a cache over ``cache_max_gb``."""
        needed = self.cached_bytes(paths)
        if needed > self.cache_max_gb * 1e9:
            raise DataError(
                f"{self.source}: caching {len(paths)} decoded images needs {needed / 1e9:.1f} GB, "
                f"more than cache_max_gb={self.cache_max_gb}; set cache_images: false or raise "
                "cache_max_gb"
            )
        log.info("caching %d images (%.1f MB)", len(paths), needed / 1e6)

    def build_dataset(self, split: str, table: pd.DataFrame, targets: np.ndarray | None
                      ) -> Dataset:
        paths = self.image_paths(table)
        transform = self.train_transforms if split == "train" else self.eval_transforms
        cache = self.split_cache(paths) if self.cache_images else None
        masks = self.mask_paths(table)
        if cache is not None and masks is None and transform is not None and is_deterministic(
                transform):
            # Deterministic per-image transforms run once, here, not in every epoch: on 5,000
            # 28x28 images with ToDtype + Normalize that is ~0.2 s saved per epoch
            # (benchmarks/user_folder.py). Each image is in one split, so still one copy.
            cache = self.transformed_cache(cache, transform, paths)
            transform = None
        return ImageCSVDataset(paths, targets, self.read_mode, transform, cache, masks=masks)

    def transformed_cache(self, cache: Sequence[Tensor] | Tensor, transform: Callable[..., Any],
                          paths: list[Path]) -> list[Tensor] | Tensor:
        """A split's cached images through its deterministic transform, replacing the uint8
        ones. A stacked cache goes through in chunks of images (v2 transforms take leading
        batch dimensions; the same values as one image at a time, ~50x faster)."""
        if isinstance(cache, Tensor):
            out = torch.cat([transform(chunk) for chunk in cache.split(1024)])
            images: Sequence[Tensor] = list(out)
        else:
            images = [transform(image) for image in cache]
            out = torch.stack(images) if len({i.shape for i in images}) == 1 else list(images)
        for path, image in zip(paths, images, strict=True):
            self._cache[path] = image
        return out

    def check_batches_stack(self, table: pd.DataFrame, split_rows: dict[str, np.ndarray]
                            ) -> None:
        """Each split's images, through its transforms, must stack into batches: one sample
        per distinct file size and mode (see :func:`check_samples_stack`)."""
        if self.batch_size == 1 or not self._headers:  # validate_images: off reads no header
            return
        for split, rows in split_rows.items():
            part = table.iloc[rows]
            paths = self.image_paths(part)
            cache = [self._cache[p] for p in paths] if self.cache_images else None
            transform = self.train_transforms if split == "train" else self.eval_transforms
            probe = ImageCSVDataset(paths, None, self.read_mode, transform, cache,
                                    masks=self.mask_paths(part))
            check_samples_stack(probe, paths, self._headers, self.source,
                                "train_transforms" if split == "train" else "eval_transforms")

    def split_cache(self, paths: list[Path]) -> list[Tensor] | Tensor:
        """A split's cached images as one ``N x C x H x W`` tensor when they share a size (a
        batch is then one gather), else a list. Each image is moved into the stack and the
        cache keeps a view of it, so memory holds one copy, never two."""
        shapes = {self._cache[path].shape for path in paths}
        if len(shapes) != 1:
            return [self._cache[path] for path in paths]
        stacked = torch.empty((len(paths), *shapes.pop()), dtype=torch.uint8)
        for row, path in enumerate(paths):
            stacked[row] = self._cache[path]
            self._cache[path] = stacked[row]
        return stacked

    # -- predict ------------------------------------------------------------------------------
    def predict_files(self) -> tuple[list[Path], Path]:
        """The files to predict and the root they must stay inside."""
        if self.predict_path is None:
            raise DataError("nothing to predict: set data.init_args.predict_path to a folder of "
                            "images or a table of image paths")
        path = self.predict_path
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            return files, path
        if path.suffix.lower() in TABLE_SUFFIXES:
            table = read_table(path)
            if self.path_column not in table.columns:
                raise DataError(f"{path}: missing column {self.path_column!r}; "
                                f"found {list(table.columns)}")
            root = self.image_root if self.explicit_image_root else path.parent
            return [root / str(p) for p in table[self.path_column]], root
        raise DataError(f"predict_path {path} is neither a folder nor a table "
                        f"({', '.join(TABLE_SUFFIXES)})")

    def build_predict_dataset(self) -> Dataset:
        files, root = self.predict_files()
        if not files:
            raise DataError(f"predict_path {self.predict_path}: no image files "
                            f"({', '.join(IMAGE_SUFFIXES)})")
        readable = files
        if self.validate_images != "off":
            decode = self.validate_images == "full"
            issues = check_image_files(files, root, decode, self.max_pixels, self._headers,
                                       remember=self.remember_checks)
            self.predict_problems = [(p, msg) for p, msg in zip(files, issues, strict=True) if msg]
            readable = [p for p, msg in zip(files, issues, strict=True) if not msg]
        if self.predict_problems:
            self.report_unreadable(len(files))
        if not readable:
            raise DataError(f"predict_path {self.predict_path}: none of the {len(files)} "
                            "image(s) can be read")
        dataset = ImageCSVDataset(readable, None, self.read_mode, self.eval_transforms)
        if self.batch_size > 1:
            check_samples_stack(dataset, readable, self._headers, str(self.predict_path),
                                "eval_transforms")
        return dataset

    def report_unreadable(self, total: int) -> None:
        """One summary line, then each skipped file with the reason (the first few; the
        prediction writer lists them all next to the predictions)."""
        lines = first_problems([message for _, message in self.predict_problems])
        rank_zero_warn("\n".join([
            f"predict_path {self.predict_path}: skipping {len(self.predict_problems)} of {total} "
            "image(s) that cannot be read:", *lines]))

    # -- what an exported model needs to know -------------------------------------------------
    def preprocessing(self) -> dict[str, Any] | None:
        """How a file becomes the model's input, for models exported without this code: read
        mode, the input shape the model sees (after per-image and batch eval transforms, e.g.
        1x12x12 for 8x8 digits padded by 2) and the normalisation. Saved in checkpoints by
        :class:`~callbacks.preprocessing_metadata.PreprocessingMetadata`; None before setup."""
        if self._preprocessing is not None:
            return self._preprocessing
        # Not the training set: its transforms (random crops) need not give the eval size.
        dataset = next((self.datasets[s] for s in ("val", "test", "predict")
                        if s in self.datasets and len(self.datasets[s])), None)
        if dataset is None:
            return None
        try:
            item = dataset[0]  # (image, target), or the image alone (predict, task none)
            batch = (item[0] if isinstance(item, tuple) else item).unsqueeze(0)
            if self.eval_batch_transforms is not None:
                batch = self.eval_batch_transforms(batch)
        except (RuntimeError, OSError) as error:
            # Metadata for export must never stop a checkpoint from being saved.
            log.warning("input shape for export metadata unknown: %s", error)
            return None
        transforms = [t for t in (self.eval_transforms, self.eval_batch_transforms)
                      if t is not None]
        steps = [t for top in transforms for t in flatten_transforms(top)]
        normalize = [t for t in steps if isinstance(t, v2.Normalize)]
        self._preprocessing = {
            "read_mode": self.read_mode,
            "input_shape": list(batch.shape[1:]),
            "input_dtype": str(batch.dtype).removeprefix("torch."),
            "mean": [float(m) for m in normalize[-1].mean] if normalize else None,
            "std": [float(s) for s in normalize[-1].std] if normalize else None,
            "eval_transforms": [repr(t) for t in steps],
        }
        return self._preprocessing
