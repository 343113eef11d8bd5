"""Stop training on the first NaN or infinite loss, before it reaches the weights.

One optimizer step with a non-finite loss's gradients makes every weight NaN, and every later
checkpoint a dead model. Checked in ``on_before_backward``, so the weights in memory and in
``last.ckpt`` (which ``Checkpoint`` leaves as it was) are the last finite ones. Lightning's
``SpikeDetection`` checks after the optimizer step, skips each epoch's first ``warmup`` batches
and adds a collective to every step; this costs one device-to-host sync a step.
"""

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from errors import NonFiniteLossError


class StopOnNonFiniteLoss(Callback):
    """Raise :class:`NonFiniteLossError`, naming the step, on the first non-finite loss."""

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule,
                           loss: Tensor) -> None:
        if bool(loss.isfinite().all()):
            return
        shown = f"{loss.item()}" if loss.numel() == 1 else "non-finite"
        rank = f" on rank {trainer.global_rank}" if trainer.world_size > 1 else ""
        raise NonFiniteLossError(
            f"training loss is {shown} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx}){rank}; "
            "stopped before the update, checkpoints hold the last finite weights. Lower the "
            "learning rate, clip gradients (trainer.gradient_clip_val) or check that batch's data."
        )
