"""Lightning's ThroughputMonitor with defaults that work from YAML."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage


def batch_size(batch: Any) -> int:
    """Samples in a batch: the length of its first tensor (``(images, targets)`` -> images)."""
    while isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if isinstance(batch, dict) and batch:
        return batch_size(next(iter(batch.values())))
    return len(batch)


class Throughput(ThroughputMonitor):
    """Logs ``train/device/samples_per_sec`` and ``train/device/batches_per_sec`` (and
    ``test/…``) to the logger, as a rolling average over ``window_size`` batches, every
    ``trainer.log_every_n_steps`` steps. Under DDP ``train/samples_per_sec`` is the global rate.
    Unlike the parent, the running totals (``train/time``, ``train/samples`` …) and the
    validation rate (logged per validation batch, against the validation batch index) are left
    out: they clutter the Scalars tab and say nothing the rates do not.

    ``ThroughputMonitor`` needs a ``batch_size_fn`` callable, awkward to give in YAML; this one
    counts the first tensor of the batch. The per-step cost is a clock read and a ``len``. FLOPs
    are reported only if the LightningModule defines ``flops_per_batch``; without it there is
    no warning.

    Args:
        window_size: batches in the rolling average; no rate is logged before that many batches.
    """

    def __init__(self, window_size: int = 20) -> None:
        super().__init__(batch_size_fn=batch_size, window_size=window_size)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Decided here instead of on the first batch, where the parent warns if it is missing.
        self._module_has_flops = hasattr(pl_module, "flops_per_batch")

    def _compute(self, trainer: Trainer, iter_num: int | None = None) -> None:
        stage = trainer.state.stage
        if stage == RunningStage.VALIDATING or not trainer._logger_connector.should_update_logs:
            return
        throughput = self._throughputs[stage]
        rates = {f"{stage.value}{throughput.separator}{name}": value
                 for name, value in throughput.compute().items() if name.endswith("_per_sec")}
        if rates:
            trainer._logger_connector.log_metrics(rates, step=iter_num)
