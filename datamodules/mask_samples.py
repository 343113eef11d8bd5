"""Segmentation samples of :class:`~datamodules.image_csv.ImageCSVDataset` (``masks`` given):
imported only by segmentation runs."""

from typing import Any

from torch import Tensor
from torchvision import tv_tensors

from datamodules.samplers import call_with_seed
from datamodules.tasks.segmentation import load_mask


def mask_sample(dataset: Any, index: int, image: Tensor, seed: int | None
                ) -> tuple[Tensor, Tensor]:
    """``(image, mask)`` of sample ``index``. One transform call on both: v2 moves a
    ``tv_tensors.Mask`` with the image in geometric transforms (nearest interpolation) and
    leaves it out of colour and dtype steps."""
    mask = tv_tensors.Mask(load_mask(dataset.masks[index]))
    if dataset.transform is not None:
        image, mask = call_with_seed(dataset.transform, image, mask, seed=seed)
    return image, mask.as_subclass(Tensor)
