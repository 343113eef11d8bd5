"""``Checkpoint``'s ``last.ckpt`` when fit stops on an exception, Ctrl+C or SIGTERM."""

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.checkpoint import Checkpoint
from errors import NonFiniteLossError


def save_on_exception(checkpoint: Checkpoint, trainer: Trainer, pl_module: LightningModule,
                      exception: BaseException) -> None:
    name, latest = type(exception).__name__, checkpoint.last_model_path or "no checkpoint"
    if trainer.validating:
        # A half-run validation would be resumed as a finished one: keep the checkpoint
        # from before it, so that a resume runs it again, whole.
        rank_zero_info(f"{name} during validation: not saving; {latest} is the latest")
    elif trainer.world_size > 1 and not isinstance(exception, (KeyboardInterrupt,
                                                                 SIGTERMException)):
        return  # the other ranks are inside a training step: a collective save would hang
    elif isinstance(exception, NonFiniteLossError) or not all_finite(pl_module):
        rank_zero_info(f"{name}: not saving the non-finite state; {latest} is the last "
                       "good one")
    elif filepath := checkpoint.save_last_checkpoint(trainer):
        rank_zero_info(f"{name} at step {trainer.global_step}: saved {filepath} (resume "
                       "with --ckpt_path last)")


def all_finite(module: torch.nn.Module) -> bool:
    """True if every parameter and buffer is finite (worth saving)."""
    tensors = [*module.parameters(), *module.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
