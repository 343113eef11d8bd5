"""Training throughput, measured between logged steps instead of after every batch."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.direct_logging import log_to_loggers, logs_this_step


def batch_size(batch: Any) -> int:
    """Samples in a batch: the length of its first tensor (``(images, targets)`` -> images)."""
    while isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if isinstance(batch, dict) and batch:
        return batch_size(next(iter(batch.values())))
    return len(batch)


class Throughput(Callback):
    """Logs ``train/device/samples_per_sec`` and ``train/device/batches_per_sec`` (plus
    ``train/samples_per_sec``, all ranks together, under DDP, and ``train/device/flops_per_sec``
    if the LightningModule has a ``flops_per_batch`` attribute) every
    ``trainer.log_every_n_steps`` steps: the samples and batches since the previous logged step
    over the time they took. Time spent in validation is left out. The logged steps and their
    step numbers are those of Lightning's own step metrics (``callbacks.direct_logging``); with
    gradient accumulation a window ends on an optimizer step and counts every batch in it.

    Lightning's ``ThroughputMonitor`` times every batch: it synchronizes the GPU after each one
    (the host can no longer queue work ahead of the device) and updates a rolling window on
    every step. Here a step costs a ``len`` and a comparison; the clock is read (after one
    synchronize on CUDA) only on the steps that are logged, where logging the loss waits for the
    device anyway. The first logged step of each epoch only starts a window: its time would
    include the epoch start (loader start-up, validation).
    """

    def __init__(self) -> None:
        self._samples = self._batches = 0
        self._window_start: float | None = None
        self._validation_started: float | None = None
        # global_step at the previous batch's end: tells whether this batch took a step.
        self._last_global_step = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_global_step = trainer.global_step  # a resumed run starts past 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._window_start = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        self._samples += batch_size(batch)
        self._batches += 1
        # A batch that only accumulated gradients leaves global_step alone, and Lightning writes
        # no step metrics for it. After the optimizer step global_step counts that step too.
        stepped = trainer.global_step != self._last_global_step
        self._last_global_step = trainer.global_step
        step = trainer.global_step - 1
        if not stepped or not logs_this_step(trainer, step):
            return
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the work queued so far belongs to this window
        now = time.perf_counter()
        if self._window_start is not None:
            seconds = now - self._window_start
            rates = {"train/device/samples_per_sec": self._samples / seconds,
                     "train/device/batches_per_sec": self._batches / seconds}
            if trainer.world_size > 1:
                rates["train/samples_per_sec"] = self._samples * trainer.world_size / seconds
            flops = getattr(pl_module, "flops_per_batch", None)
            if flops:
                rates["train/device/flops_per_sec"] = flops * self._batches / seconds
            log_to_loggers(trainer, rates, step)
        self._window_start, self._samples, self._batches = now, 0, 0

    # Validation inside a training epoch (val_check_interval < 1) is not training time.
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validation_started = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._window_start is not None and self._validation_started is not None:
            self._window_start += time.perf_counter() - self._validation_started
        self._validation_started = None
