"""Stop training on the first NaN or infinite loss, before it reaches the weights.

One optimizer step with a non-finite loss's gradients makes every weight NaN, and every later
checkpoint a dead model. Checked in ``on_before_backward``, so the weights in memory and in
``last.ckpt`` (which ``Checkpoint`` leaves as it was) are the last finite ones. Lightning's
``SpikeDetection`` checks after the optimizer step, skips each epoch's first ``warmup`` batches
and adds a collective to every step; this costs one device-to-host sync a step.
"""

import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from errors import NonFiniteLossError


class StopOnNonFiniteLoss(Callback):
    """Raise :class:`NonFiniteLossError`, naming the step, on the first non-finite loss."""

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule,
                           loss: Tensor) -> None:
        # A scalar's .item() is the cheapest check on CPU (~1 us against ~15 for isfinite()).
        if math.isfinite(loss.item()) if loss.numel() == 1 else bool(loss.isfinite().all()):
            return
        value = loss.detach().float().cpu()
        shown = f"{value.item()}" if value.numel() == 1 else "non-finite"
        rank = f" on rank {trainer.global_rank}" if trainer.world_size > 1 else ""
        raise NonFiniteLossError(
            f"training loss is {shown} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx}){rank}; "
            "stopped before the update, checkpoints hold the last finite weights. Lower the "
            "learning rate, clip gradients (trainer.gradient_clip_val) or check that batch's data."
        )


def all_finite(module: torch.nn.Module) -> bool:
    """True if every parameter and buffer is finite (worth saving)."""
    tensors = [*module.parameters(), *module.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
