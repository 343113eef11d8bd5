"""One sample through the model before the first training step."""

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.nn.parameter import is_lazy
from torch.utils.data import default_collate

from errors import DataError


class CheckModelTakesData(Callback):
    """Runs one sample of the stage's data (fit: validation, else training) through
    ``pl_module(inputs)``, in eval mode without gradients, when a stage sets up: a model
    unlike the data (``in_features``, ``in_channels``, a checkpoint's model for other images)
    fails in one line naming the sample's shape instead of a traceback from the
    sanity check, and lazy layers get their shapes before the optimizer and DDP (which refuses
    them) see the parameters. A module without a ``forward`` of the inputs alone, or that builds
    its layers in its own ``setup``/``configure_model``, is left to Lightning; so is a compiled
    backbone (compiling twice costs more than it saves). A datamodule without this template's
    ``datasets`` gives its first validation (else training) batch, for lazy layers only."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if getattr(pl_module, "hparams", {}).get("compile_backbone"):
            return
        batch = self.first_batch(trainer, pl_module, stage)
        if batch is None:
            return
        batch = trainer.datamodule.on_after_batch_transfer(batch, 0)  # eval batch transforms
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        was_training = pl_module.training
        pl_module.eval()
        try:
            # Under the run's precision (autocast for *-mixed), as its steps will run.
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                pl_module(inputs)
        except (TypeError, NotImplementedError, AttributeError):
            return  # no forward, one that takes more than the inputs, or layers built later
        except RuntimeError as error:
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
            first_line = str(error).strip().splitlines()[0]
            raise DataError(
                f"{type(pl_module).__name__} does not take the data's samples (one sample of "
                f"shape {shape}): {first_line}. Check the model's input size (in_features / "
                "in_channels) against the data.") from error
        finally:
            pl_module.train(was_training)
        lazy = [name for name, param in pl_module.named_parameters() if is_lazy(param)]
        if lazy and trainer.world_size > 1:
            raise DataError(f"{type(pl_module).__name__}: {', '.join(lazy)} still have no shape "
                            "after forward(inputs) (a lazy layer that forward does not call), and "
                            "DistributedDataParallel needs every shape: give that layer its "
                            "input size")

    @staticmethod
    def first_batch(trainer: Trainer, pl_module: LightningModule, stage: str) -> Any:
        """One sample as a batch, or None where there is nothing to check."""
        splits = {"fit": ("val", "train"), "validate": ("val",)}.get(stage, (stage,))
        datamodule = trainer.datamodule
        datasets = getattr(datamodule, "datasets", None)
        if isinstance(datasets, dict):
            dataset = next((datasets[s] for s in splits if len(datasets.get(s) or ())), None)
            return None if dataset is None else default_collate([dataset[0]])
        if datamodule is None or not any(is_lazy(p) for p in pl_module.parameters()):
            return None
        from callbacks.first_loader_batch import first_loader_batch

        return first_loader_batch(datamodule, splits)
