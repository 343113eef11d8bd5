"""A small convolutional network: the default backbone for small images such as 8x8 digits."""

from collections.abc import Sequence

from torch import Tensor, nn


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    # No conv bias: the BatchNorm shift that follows makes it redundant.
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, a 2x2 max-pool after each block in ``pool_after`` (default: all but
    the last), global average pooling (any input size), dropout and a linear head. The digits
    default: widths (32, 64, 128), one pool after the second block on 12x12, ~94k parameters.

    ``in_channels``: None is filled in by the module with the data's channels, else means 1.
    """

    def __init__(self, num_classes: int, in_channels: int | None = None,
                 widths: Sequence[int] = (32, 64, 128), pool_after: Sequence[int] | None = None,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if not widths:
            raise ValueError("SmallCNN needs at least one width")
        pools = set(range(len(widths) - 1) if pool_after is None else pool_after)
        blocks: list[nn.Module] = []
        channels = 1 if in_channels is None else in_channels
        for i, width in enumerate(widths):
            blocks.append(conv_bn_relu(channels, width))
            if i in pools:
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)))
