"""A small U-Net: the default backbone of ``models.segmenter.Segmenter``.

Ronneberger et al. (2015): an encoder that halves the resolution level by level, a decoder
that climbs back, and at each level the encoder's features concatenated to the decoder's, so the
per-pixel logits see both the context (deep, coarse) and the exact edges (shallow, fine).
Trained from scratch: no pretrained weights, nothing to download.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.small_cnn import conv_bn_relu


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(in_channels, out_channels),
                         conv_bn_relu(out_channels, out_channels))


class UNet(nn.Module):
    """Per-pixel logits ``(N, num_classes, H, W)`` for images ``(N, in_channels, H, W)``.

    Args:
        num_classes: output channels, one logit per class and pixel.
        in_channels: image channels. None (unset) is left for ``Segmenter`` to fill in with the
            data's (``data.in_channels``: 1 gray, 3 RGB); built alone, or for data that does not
            know it, it means 3 (RGB).
        widths: channels per level, from the full resolution down; ``len(widths)`` levels, so
            ``len(widths) - 1`` halvings. (16, 32, 64) has ~120k parameters and sees 4x4
            features at the bottom of a 16x16 image.

    Any input size works: the halvings round up (``ceil_mode``), and each decoder level is
    resized to its skip connection's exact size before the two are concatenated. Sizes
    divisible by ``2 ** (len(widths) - 1)`` need no resizing beyond the plain 2x.
    """

    def __init__(self, num_classes: int, in_channels: int | None = None,
                 widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        if not widths:
            raise ValueError("UNet needs at least one width")
        channels = 3 if in_channels is None else in_channels
        self.down = nn.ModuleList()
        for width in widths:
            self.down.append(double_conv(channels, width))
            channels = width
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        # From the bottom up: the coarser level's features joined with the skip of this one.
        self.up = nn.ModuleList(double_conv(coarse + fine, fine)
                                for coarse, fine in zip(widths[:0:-1], widths[-2::-1],
                                                        strict=True))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)
