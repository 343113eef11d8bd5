"""Checking many image files (from ``validation.PARALLEL_AFTER`` on): in forked processes, one
per CPU up to 8, a chunk of files at a time (threads would not help: resolving, header parsing
and decoding hold the GIL; 4 threads ran 2.6x slower than one). Over PROGRESS_AFTER files a
line every PROGRESS_EVERY seconds says how far it got."""

import contextlib
import functools
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from datamodules import validation

CHUNK = 1024  # files per task of a worker process
PROGRESS_AFTER = 20_000
PROGRESS_EVERY = 10.0


def check_many(paths: list[Path], root: Path, decode: bool, max_pixels: int
               ) -> list[tuple[str | None, validation.Header | None]]:
    """:func:`validation.check_chunk` over ``paths`` in chunks of CHUNK files, in order."""
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    check = functools.partial(validation.check_chunk, root=root, decode=decode,
                              max_pixels=max_pixels)
    workers = min(8, os.cpu_count() or 1)
    results: list[tuple[str | None, validation.Header | None]] = []
    start = last = time.monotonic()
    with contextlib.ExitStack() as stack:
        done = map(check, chunks)
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            # Forked: the workers start with this process's imports, in milliseconds.
            done = stack.enter_context(ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("fork"))).map(check, chunks)
        for chunk_results in done:
            results.extend(chunk_results)
            now = time.monotonic()
            if len(paths) > PROGRESS_AFTER and now - last > PROGRESS_EVERY:
                last, count = now, len(results)
                rate = count / (now - start)
                rank_zero_info(f"checked {count:,} of {len(paths):,} image files ({rate:,.0f}/s,"
                               f" about {(len(paths) - count) / rate:.0f} s left)")
    return results
