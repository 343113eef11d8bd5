"""``cache_images: auto``: cache the decoded images where they fit the smaller of
``cache_max_gb`` and a quarter of this machine's memory per process on it; said in one line.
Not caching, ``validate_images: full`` decodes each file here (the cache would have)."""

import contextlib
import os
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from datamodules.image_csv import ImageCSVDataModule, readable
from datamodules.validation import Problem, check_image_files


def cache_decision(data: ImageCSVDataModule, paths: list[Path], rows: list[int]
                   ) -> tuple[bool, list[Problem]]:
    """Whether to cache ``paths`` (of table ``rows``), and the files that do not decode."""
    needed, budget = data.cached_bytes(paths), data.cache_max_gb * 1e9
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    with contextlib.suppress(ValueError, OSError, AttributeError):  # no sysconf: Windows
        budget = min(budget, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4
                     / processes)
    cache = needed <= budget
    rank_zero_info(f"{data.source}: cache_images: auto: "
                   f"{'caching' if cache else 'not caching'} {len(paths)} images "
                   f"({readable(needed)} in memory, {'within' if cache else 'over'} the "
                   f"{readable(budget)} budget)"
                   + ("" if cache else "; set cache_images: true to force it"))
    if cache or data.validate_images != "full":
        return cache, []
    issues = check_image_files(paths, data.image_root, True, data.max_pixels, data._headers,
                               data.remember_checks)
    return cache, [Problem(row, msg) for row, msg in zip(rows, issues, strict=True) if msg]
