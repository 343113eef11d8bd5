"""Lightning's EMAWeightAveraging, fixed for the fit-then-test flow of
train.py."""

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class EMA(EMAWeightAveraging):
    """Exponential moving average of the weights: ``decay``, ``update_every_n_steps``,
    ``update_starting_at_step`` / ``_epoch`` as in Lightning's ``EMAWeightAveraging``.

    Validation runs on the averaged weights, checkpoints store them as ``state_dict`` (the raw
    ones as ``current_model_state``, for resuming) and fit ends with them in the model.
    The one change: Lightning's callback, still holding its average after fit, reloads
    ``current_model_state`` (the raw weights) when ``trainer.test`` / ``validate`` /
    ``predict`` then load a checkpoint, so the best checkpoint would be tested with the weights
    it was *not* chosen for. Outside fit this leaves the checkpoint's ``state_dict``, the
    average, in place.
    """

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
