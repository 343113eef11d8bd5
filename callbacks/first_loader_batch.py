"""``CheckModelTakesData``'s sample for a datamodule without this template's ``datasets``."""

from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.model_helpers import is_overridden


def first_loader_batch(datamodule: LightningDataModule, splits: tuple[str, ...]) -> Any:
    """The first batch of the first split whose loader the datamodule defines, or None."""
    for hook in (f"{split}_dataloader" for split in splits):
        if is_overridden(hook, datamodule):  # the loader is started once for it
            loader = getattr(datamodule, hook)()
            loader = loader[0] if isinstance(loader, (list, tuple)) else loader
            return next(iter(loader), None)
    return None
