"""Write step metrics straight to the run's loggers, as Lightning's LearningRateMonitor does."""

from __future__ import annotations

from lightning.pytorch import Trainer


def log_to_loggers(trainer: Trainer, metrics: dict[str, float]) -> None:
    """Hand ``metrics`` to every logger at the step Lightning's own step metrics use.

    For diagnostics that nothing monitors (rates, norms): ``self.log`` costs ~1 ms of
    bookkeeping per value and call, and ``trainer._logger_connector.log_metrics`` makes every
    logger save (TensorBoard flushes its event file to disk) each time. Values written here are
    not in ``trainer.callback_metrics``, so checkpoints and early stopping cannot monitor them.
    Loggers write from rank 0 only.
    """
    step = trainer.fit_loop.epoch_loop._batches_that_stepped
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)
