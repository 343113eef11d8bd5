"""A multilayer perceptron: the backbone for tabular features."""

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Linear-BatchNorm-ReLU-Dropout blocks and a linear head. ``in_features``: the number of
    feature columns (the module passes the data's ``num_features`` when the config leaves it
    out). BatchNorm keeps training stable even with feature standardisation turned off."""

    def __init__(self, num_classes: int, in_features: int | None = None,
                 hidden: Sequence[int] = (64, 64), dropout: float = 0.1) -> None:
        super().__init__()
        if in_features is None:
            raise ValueError("MLP needs in_features, the number of feature columns (train.py "
                             "takes it from a DataFrame datamodule's num_features)")
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size, bias=False), nn.BatchNorm1d(size),
                       nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
