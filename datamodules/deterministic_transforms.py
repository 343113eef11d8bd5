"""Deterministic per-image transforms: which are (they draw no seed), and over an image cache,
run once into it instead of every epoch (~0.2 s an epoch on 5,000 28x28 images with ToDtype +
Normalize, benchmarks/user_folder.py), with what their output takes in memory. Imported only
where a per-image transform is set."""

import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2

TRANSFORM_CHUNK = 1024  # cached images per call of a deterministic transform
# v2 transforms whose output depends on the input alone: they draw no seed, and run once per
# cached image instead of every epoch. Anything else counts as random.
DETERMINISTIC = (v2.ToDtype, v2.Normalize, v2.Resize, v2.CenterCrop, v2.Pad, v2.Grayscale,
                 v2.ToImage, v2.ToPureTensor, v2.Identity, torch.nn.Identity)


def is_deterministic(transform: Any) -> bool:
    """True for None and for (nested) ``Compose`` pipelines of DETERMINISTIC steps only."""
    if isinstance(transform, v2.Compose):
        return all(is_deterministic(step) for step in transform.transforms)
    return transform is None or isinstance(transform, DETERMINISTIC)


def transformed_bytes(transforms: Sequence[Callable[..., Any]],
                      shapes: Counter[tuple[int, int, int]], probes: int = 64) -> int:
    """Bytes of the largest output of the deterministic ``transforms`` (the others run per
    sample) for ``shapes`` (uint8 image shape -> count), from the output's shape and dtype on a
    "meta" tensor (no memory, ~0.7 ms each); of many sizes, ``probes`` spread over their pixel
    counts, the others scaling like the probe closest in pixels. A transform that fails there
    counts as float32 of the input's size."""
    sizes = sorted(shapes, key=math.prod)
    probed = sizes if len(sizes) <= probes else [
        sizes[round(i * (len(sizes) - 1) / (probes - 1))] for i in range(probes)]
    most = 0.0
    for transform in {id(t): t for t in transforms if is_deterministic(t)}.values():  # often one
        per_byte = {}
        for shape in probed:
            try:
                out = transform(torch.empty(shape, dtype=torch.uint8, device="meta"))
                per_byte[shape] = out.numel() * out.element_size() / math.prod(shape)
            except Exception:  # an estimate only: the samples' check reports a real error
                per_byte[shape] = 4.0
        total = 0.0
        for shape, count in shapes.items():
            nearest = min(probed, key=lambda p: abs(math.prod(p) - math.prod(shape)))
            total += count * per_byte[nearest] * math.prod(shape)
        most = max(most, total)
    return round(most)


def transformed_cache(cache: Sequence[Tensor] | Tensor, transform: Callable[..., Any],
                      paths: list[Path], images_by_path: dict[Path, Tensor]
                      ) -> tuple[Sequence[Tensor] | Tensor, Callable[..., Any] | None]:
    """A split's ``cache`` and ``transform``: a deterministic one run once on it (stacked if its
    images share a size), each image of ``paths`` replaced in ``images_by_path``, and no
    transform left; else both as they are. A stacked cache goes in chunks (v2 takes leading
    batch dimensions: ~50x faster), each into place: one copy in memory."""
    if not is_deterministic(transform):
        return cache, transform
    if isinstance(cache, Tensor):
        step = TRANSFORM_CHUNK
        first = transform(cache[:step])
        out = torch.empty((len(cache), *first.shape[1:]), dtype=first.dtype)
        out[:step] = first
        for start in range(step, len(cache), step):
            out[start:start + step] = transform(cache[start:start + step])
        images: Sequence[Tensor] = list(out)
    else:
        images = [transform(image) for image in cache]
        out = torch.stack(images) if len({i.shape for i in images}) == 1 else images
    images_by_path.update(zip(paths, images, strict=True))  # each image is in one split
    return out, None
