"""Save a batch as a labelled image grid: the first thing to look at when accuracy is odd."""

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.utils import make_grid

LABEL_HEIGHT = 12


def show_batch(
    images: Tensor,
    targets: Tensor,
    class_names: Sequence[str],
    path: str | Path,
    max_images: int = 32,
    nrow: int = 8,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    min_size: int = 48,
) -> Path:
    """Write ``images`` (B, C, H, W; uint8, or float in [0, 1] or normalised with ``mean``/``std``)
    as a PNG grid with each image's class name under it; small images are enlarged (nearest
    neighbour) to at least ``min_size`` pixels so the labels and pixels stay readable."""
    names = [class_names[t] if 0 <= t < len(class_names) else "?"
             for t in targets[:max_images].tolist()]
    picture = labelled_grid(images, names, max_images=max_images, nrow=nrow, mean=mean, std=std,
                            min_size=min_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def labelled_grid(
    images: Tensor,
    labels: Sequence[str],
    max_images: int = 32,
    nrow: int = 8,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    min_size: int = 48,
) -> Image.Image:
    """The grid :func:`show_batch` saves, as an RGB PIL image with ``labels[i]`` under image i
    (used by ``callbacks.tensorboard_images`` too). Float images without ``mean``/``std`` that
    are not in [0, 1] are min-max scaled as a whole, so they stay visible."""
    images = images[:max_images].detach().cpu()
    if images.dtype == torch.uint8:
        images = images.float() / 255
    elif mean is not None and std is not None:
        images = images * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    elif images.numel() and (images.min() < 0 or images.max() > 1):
        images = (images - images.min()) / (images.max() - images.min()).clamp_min(1e-12)
    images = images.float().clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] > 3:  # e.g. RGBA or stacked channels: show the first three
        images = images[:, :3]
    scale = max(1, -(-min_size // max(images.shape[-2:])))
    images = F.interpolate(images, scale_factor=scale, mode="nearest")
    # Room under every tile for its label.
    images = F.pad(images, (0, 0, 0, LABEL_HEIGHT), value=1.0)
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=1.0)
    # make_grid gives CHW; PIL wants HWC.
    picture = Image.fromarray((grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    draw = ImageDraw.Draw(picture)
    tile_h, tile_w = images.shape[-2] + 2, images.shape[-1] + 2
    for i, label in enumerate(list(labels)[: len(images)]):
        x, y = 2 + (i % nrow) * tile_w, 2 + (i // nrow) * tile_h + tile_h - 2 - LABEL_HEIGHT
        draw.text((x + 1, y), label, fill=(0, 0, 0))
    return picture
