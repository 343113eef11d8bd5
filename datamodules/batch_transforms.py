"""Augmentations of a whole batch with random parameters per image (a v2 random transform draws
one set per call, moving every image of a batch the same way): on small images an order of
magnitude faster than per-image calls, and on the GPU when the batch is there."""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2


class RandomShiftBatch(v2.Transform):
    """Translate each image by up to ``max_shift`` pixels in x and y, filling with ``fill``
    (the batch counterpart of ``v2.RandomCrop(size, padding=max_shift)``)."""

    def __init__(self, max_shift: int = 2, fill: float = 0.0) -> None:
        super().__init__()
        self.max_shift = max_shift
        self.fill = fill

    def forward(self, images: Tensor) -> Tensor:  # type: ignore[override]
        if self.max_shift <= 0:
            return images
        height, width = images.shape[-2:]
        s = self.max_shift
        padded = F.pad(images, (s, s, s, s), value=self.fill)
        # Offsets drawn on the CPU (no device sync), one crop view per image, one stack: ~20x
        # faster on CPU than a gather with broadcast index tensors.
        offsets = torch.randint(0, 2 * s + 1, (len(images), 2)).tolist()
        return torch.stack([padded[i, :, y : y + height, x : x + width]
                            for i, (y, x) in enumerate(offsets)])


class RandomHorizontalFlipBatch(v2.Transform):
    """Mirror each image left-right with probability ``p``, independently."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, images: Tensor) -> Tensor:  # type: ignore[override]
        # Drawn on the CPU (no device sync), only the chosen images flipped: ~3x faster on CPU
        # than a where() over the batch and its flipped copy.
        chosen = (torch.rand(len(images)) < self.p).tolist()
        return torch.stack([img.flip(-1) if c else img
                            for img, c in zip(images, chosen, strict=True)])

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ToFloatNormalize(v2.Normalize):
    """``ToDtype(float32, scale=True)`` then ``Normalize(mean, std)`` (in the [0, 1] scale) in
    two passes and one allocation instead of four and two: most of the per-batch cost once images
    are cached. It is a ``Normalize``, so export metadata and TensorBoard pictures find it; float
    inputs are taken as already scaled and only normalized."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(mean, std)
        if not all(self.std):
            raise ValueError(f"ToFloatNormalize: std must not contain zeros, got {self.std}")

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, Tensor) or inpt.dtype != torch.uint8:
            return super().transform(inpt, params)
        mean = torch.tensor(self.mean, device=inpt.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=inpt.device).view(-1, 1, 1)
        # (x / 255 - mean) / std == x * (1 / (255 std)) - mean / std
        out = inpt.to(torch.float32).mul_(1.0 / (255.0 * std)).sub_(mean / std)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out
