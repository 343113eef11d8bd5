"""Keep what is alive when fit starts out of Python's full garbage collections."""

from __future__ import annotations

import gc

from lightning.pytorch import Callback, LightningModule, Trainer


class FreezeStartupObjects(Callback):
    """``gc.freeze()`` when fit starts, ``gc.unfreeze()`` when it ends.

    What is alive when training starts (torch, Lightning, the parsed config, the model, the
    cached data: hundreds of thousands of objects) stays alive until the end. Python's full
    collections, which training's allocations trigger at unpredictable steps, would walk all
    of it every time; frozen, it is left out of them (``benchmarks/overhead.py`` measures the
    difference). Objects made during fit are collected as usual.
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        gc.freeze()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        gc.unfreeze()
