"""Task ``segmentation``: a ``mask_column`` of mask image paths, one class index per pixel,
``class_names`` giving the classes of mask values 0, 1, ... -> an int64 (H, W) mask. The masks
are the targets, so there is nothing to encode from the table; the datamodule reads and checks
the mask files (the functions below), and geometric transforms move image and mask together."""

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors

from datamodules.samplers import call_with_seed
from datamodules.tasks import NoTargets
from datamodules.validation import check_image_file
from errors import DataError


class Segmentation(NoTargets):
    has_classes = True

    def __init__(self, columns: list[str], delimiter: str | None, mask_column: str | None,
                 class_names: list[str] | None) -> None:
        if not mask_column:
            raise DataError("task: segmentation needs mask_column, the column of mask image paths")
        if not class_names:
            raise DataError("task: segmentation needs class_names, the class of mask value 0, "
                            "1, ... (e.g. class_names: [background, cell])")

    def transform_batch(self, transform: Callable, images: Tensor, masks: Tensor
                        ) -> tuple[Tensor, Tensor]:
        """Geometric batch transforms must move the masks with the images."""
        images, masks = transform(images, tv_tensors.Mask(masks))
        return images, masks.as_subclass(Tensor)


def mask_sample(dataset: Any, index: int, image: Tensor, seed: int | None
                ) -> tuple[Tensor, Tensor]:
    """``(image, mask)`` of an ``ImageCSVDataset`` sample with ``masks``. One transform call on
    both: v2 moves a ``tv_tensors.Mask`` with the image in geometric transforms (nearest
    interpolation) and leaves it out of colour and dtype steps."""
    mask = tv_tensors.Mask(load_mask(dataset.masks[index]))
    if dataset.transform is not None:
        image, mask = call_with_seed(dataset.transform, image, mask, seed=seed)
    return image, mask.as_subclass(Tensor)


def load_mask(path: str | Path) -> Tensor:
    """A segmentation mask as int64 (H, W) class indices. Read with PIL, not decode_image: a
    palette PNG (as in Pascal VOC) must give its palette indices, not the colours they stand
    for; 8- and 16-bit grayscale give their values."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16", "1"):
            raise ValueError(f"mask {path} is a {image.mode} image; a mask needs one channel "
                             "of class indices (a grayscale or palette PNG)")
        return torch.from_numpy(np.array(image, dtype=np.int64))


def check_mask(image_path: Path, mask_path: Path, root: Path, num_classes: int,
               ignore_index: int | None) -> str | None:
    """What is wrong with a segmentation mask, or None: missing or outside the root, not one
    channel, a size other than its image's, or a value that is no class."""
    problem = check_image_file(mask_path, root, decode=False)
    if problem:
        return f"mask: {problem}"
    try:
        mask = load_mask(mask_path)
        with Image.open(image_path) as image:
            size = image.size
    except (ValueError, OSError) as error:
        return str(error)
    if (mask.shape[1], mask.shape[0]) != size:
        return (f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{image_path} is {size[0]}x{size[1]}")
    values = torch.unique(mask)
    if ignore_index is not None:
        values = values[values != ignore_index]
    bad = values[(values < 0) | (values >= num_classes)]
    if len(bad):
        return (f"mask {mask_path} has value {int(bad[0])}, outside the {num_classes} classes "
                "(class_names; ignore_index for unlabelled pixels)")
    return None


def check_masks(images: Sequence[Path], masks: Sequence[Path], root: Path, num_classes: int,
                ignore_index: int | None) -> list[str | None]:
    """:func:`check_mask` for many files, on threads; one result per mask, in order."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda pair: check_mask(*pair, root, num_classes, ignore_index),
                             zip(images, masks, strict=True)))
