"""A small convolutional network: the default backbone for small images such as 8x8 digits."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    # No conv bias: the BatchNorm shift that follows makes it redundant.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, a 2x2 max-pool after every block but the last, global average pool,
    dropout and a linear head.

    With the default widths it has ~57k parameters and reaches >= 99 % test accuracy on
    scikit-learn's 8x8 digits in a few epochs. Global pooling keeps it input-size agnostic, so
    the same class works for 28x28 or 64x64 images.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: Sequence[int] = (32, 48, 96),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("SmallCNN needs at least one width")
        blocks: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            blocks.append(conv_bn_relu(channels, width))
            if i < len(widths) - 1:
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)))
