"""Deterministic per-image transforms (``image_csv.is_deterministic``) over an image cache: run
once, into the cache, instead of every epoch (~0.2 s an epoch on 5,000 28x28 images with
ToDtype + Normalize, benchmarks/user_folder.py), and what their output takes in memory."""

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

TRANSFORM_CHUNK = 1024  # cached images per call of a deterministic transform


def transformed_bytes(transform: Callable[..., Any], shapes: Counter[tuple[int, int, int]],
                      probes: int = 64) -> int:
    """Bytes of ``transform``'s output for ``shapes`` (uint8 image shape -> count), from the
    output's shape and dtype on a "meta" tensor (no memory, ~0.7 ms each); of many sizes,
    ``probes`` spread over their pixel counts, the others scaling like the probe closest in
    pixels. A transform that fails there counts as float32 of the input's size."""
    sizes = sorted(shapes, key=math.prod)
    probed = sizes if len(sizes) <= probes else [
        sizes[round(i * (len(sizes) - 1) / (probes - 1))] for i in range(probes)]
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
    return round(total)


def transformed_cache(cache: Sequence[Tensor] | Tensor, transform: Callable[..., Any]
                      ) -> tuple[Sequence[Tensor] | Tensor, Sequence[Tensor]]:
    """``cache`` through ``transform`` (stacked if its images share a size) and its images. A
    stacked cache goes in chunks (v2 takes leading batch dimensions: ~50x faster), each into
    place: one copy in memory."""
    if isinstance(cache, Tensor):
        step = TRANSFORM_CHUNK
        first = transform(cache[:step])
        out = torch.empty((len(cache), *first.shape[1:]), dtype=first.dtype)
        out[:step] = first
        for start in range(step, len(cache), step):
            out[start:start + step] = transform(cache[start:start + step])
        return out, list(out)
    images = [transform(image) for image in cache]
    return (torch.stack(images) if len({i.shape for i in images}) == 1 else images), images
