"""A profiler that costs nothing, for runs that profile nothing."""

from __future__ import annotations

import contextlib

from lightning.pytorch.profilers import PassThroughProfiler


class NoProfiler(PassThroughProfiler):
    """The Trainer's profiler when none is asked for (``--trainer.profiler simple`` and the
    others replace it). Lightning wraps every hook call of every callback in
    ``profiler.profile(name)``; the default pass-through profiler builds a new generator-based
    context manager each time, this one hands back the same empty one (``benchmarks/overhead.py``
    measures the difference)."""

    def profile(self, action_name: str) -> contextlib.nullcontext:  # type: ignore[override]
        return _NOTHING


_NOTHING = contextlib.nullcontext()
