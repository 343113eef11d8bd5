"""``cache_images: auto``: cache the decoded images where they fit the smaller of
``cache_max_gb`` and a quarter of this machine's memory per process on it; said in one line."""

import contextlib
import os
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from datamodules.image_csv import ImageCSVDataModule, readable


def cache_decision(data: ImageCSVDataModule, paths: list[Path]) -> bool:
    """Whether to cache ``paths``."""
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
    return cache
