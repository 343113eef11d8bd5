"""Write step metrics straight to the run's loggers, as Lightning's LearningRateMonitor does, on
the steps and at the step numbers Lightning writes its own step metrics.

Both functions take the training step the values belong to, ``step``, counted from 0 as
``trainer.global_step`` counts optimizer steps: step ``s`` is the one whose optimizer step takes
``global_step`` from ``s`` to ``s + 1`` (with gradient accumulation, every batch of the group
belongs to it). The default, ``trainer.global_step``, is that step until its optimizer step is
taken: right in ``on_train_batch_start``, ``training_step`` and ``on_before_optimizer_step``.
Once it is taken (``on_train_batch_end`` of a batch that stepped, and what follows it within
``fit``: validation, ``on_train_epoch_end``) the values belong to ``trainer.global_step - 1``,
and Lightning writes its own there: pass that.

This holds under automatic optimization (one optimizer), where Lightning's logging step and
``global_step`` count the same steps; under manual optimization ``global_step`` counts every
``optimizer.step()`` call and Lightning's logging step counts batches.
"""

from __future__ import annotations

from lightning.pytorch import Trainer


def logs_this_step(trainer: Trainer, step: int | None = None) -> bool:
    """Whether Lightning writes the step-level metrics of training step ``step`` (default
    ``trainer.global_step``, see the module docstring) to the loggers: every
    ``trainer.log_every_n_steps`` steps (``step + 1`` a multiple of it), and on every step once
    ``trainer.should_stop`` is set; never with ``log_every_n_steps=0``.

    Lightning decides this in its logger connector (``should_update_logs``, which the
    LearningRateMonitor asks); this is the same test from public members. Lightning writes after
    the step's last batch, so a ``should_stop`` set later in that batch makes it write a step
    this said no to. On a batch that only accumulates gradients the answer is for the step its
    group ends with: Lightning writes nothing for such a batch.
    """
    every = trainer.log_every_n_steps
    if every == 0:
        return False
    if step is None:
        step = trainer.global_step
    return (step + 1) % every == 0 or trainer.should_stop


def log_to_loggers(trainer: Trainer, metrics: dict[str, float], step: int | None = None) -> None:
    """Hand ``metrics`` to every logger at ``step`` (default ``trainer.global_step``; see the
    module docstring for when to pass ``trainer.global_step - 1``): the step number Lightning
    writes that training step's own metrics at.

    For diagnostics that nothing monitors (rates, norms): ``self.log`` adds bookkeeping per value
    and call, and Lightning's own path to the loggers makes every logger save (TensorBoard
    flushes its event file to disk) each time. Values written here are not in
    ``trainer.callback_metrics``, so checkpoints and early stopping cannot monitor them. Loggers
    write from rank 0 only.
    """
    if step is None:
        step = trainer.global_step
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)
