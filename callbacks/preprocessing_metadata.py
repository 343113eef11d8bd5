"""Records in every checkpoint how inputs are preprocessed, for models exported without this
code (``models.export`` writes it next to the ONNX / TorchScript file)."""

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class PreprocessingMetadata(Callback):
    """Saves ``datamodule.preprocessing()`` (read mode, input shape after the eval transforms,
    normalisation: the transforms are objects, not saved hyperparameters) as
    ``checkpoint["preprocessing"]``, for datamodules that describe it."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        describe = getattr(trainer.datamodule, "preprocessing", None)
        if callable(describe) and (metadata := describe()):
            checkpoint["preprocessing"] = metadata
