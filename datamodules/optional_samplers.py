"""The training samplers ``sampler:`` chooses besides the default ``random``, and the check of
``weight_column``; imported only where they are used."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from datamodules.samplers import EpochSeededSampler
from datamodules.tasks import plain
from datamodules.validation import Problem


class SequentialShardSampler(EpochSeededSampler):
    """Rows in table order, every epoch (e.g. curriculum or debugging)."""

    def global_order(self, generator: torch.Generator) -> Tensor:
        return torch.arange(len(self.dataset))


class WeightedShardSampler(EpochSeededSampler):
    """``num_draws`` rows drawn with replacement in proportion to ``weights``."""

    def __init__(self, weights: Sequence[float] | Tensor, num_draws: int | None = None,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.weights = w = torch.as_tensor(weights, dtype=torch.double)
        if w.ndim != 1 or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("sampler weights must be finite, non-negative and not all zero")
        super().__init__(num_draws or len(self.weights), num_replicas, rank, seed)

    def global_order(self, generator: torch.Generator) -> Tensor:
        return torch.multinomial(self.weights, len(self.dataset), replacement=True,
                                 generator=generator)


class SubsetRandomShardSampler(EpochSeededSampler):
    """A fixed subset of rows (chosen once from ``seed``), in a new order every epoch."""

    def __init__(self, indices: Sequence[int] | Tensor, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0) -> None:
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        super().__init__(len(self.indices), num_replicas, rank, seed)

    def global_order(self, generator: torch.Generator) -> Tensor:
        return self.indices[torch.randperm(len(self.indices), generator=generator)]


def class_balanced_weights(targets: Sequence[int] | Tensor) -> Tensor:
    """Per-row weight 1 / (rows of its class): every class is drawn equally often."""
    targets = torch.as_tensor(targets, dtype=torch.long)
    return 1.0 / torch.bincount(targets).double()[targets]


def chosen_sampler(data: Any, shard: dict[str, int]) -> EpochSeededSampler:
    """The training sampler ``data.sampler`` names (a TableDataModule's, not ``random``)."""
    size = len(data.datasets["train"])
    if data.sampler == "sequential":
        return SequentialShardSampler(size, **shard)
    if data.sampler == "weighted":
        if data.weight_column:  # checked with the table: finite, >= 0, some above 0
            weights = pd.to_numeric(data.split_tables["train"][data.weight_column])
            return WeightedShardSampler(torch.tensor(weights.to_numpy(np.float64)), **shard)
        weights = class_balanced_weights(data.datasets["train"].targets)  # multiclass
        return WeightedShardSampler(weights, **shard)
    if data.sampler == "subset_random":
        chosen = torch.randperm(size, generator=torch.Generator().manual_seed(shard["seed"]))
        return SubsetRandomShardSampler(chosen[: max(1, round(data.subset_fraction * size))],
                                        **shard)
    raise ValueError(f"unknown sampler {data.sampler!r}")


def weight_problems(table: pd.DataFrame, column: str) -> list[Problem]:
    """Rows whose ``weight_column`` cell is not a finite number >= 0."""
    cells = table[column]
    weights = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64)
    return [Problem(int(row), f"weight {plain(cells.iloc[row])!r} in column "
                              f"{column!r} is not a finite number >= 0")
            for row in np.flatnonzero(~(np.isfinite(weights) & (weights >= 0)))]
