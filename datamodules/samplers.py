"""Training samplers that stay correct under DDP and resume inside an epoch.

Every rank draws the *same* global sequence from ``(seed, epoch)`` and keeps a strided shard of
it, so shards are disjoint and a seed reproduces the run. They subclass ``DistributedSampler`` so
that Lightning uses them as they are instead of wrapping them in ``DistributedSamplerWrapper``
(only right when every rank's inner sampler draws identically: Lightning #10946/#12866), and
calls their ``set_epoch``. Each index carries a seed for its sample's random transforms
(:class:`SeededIndex`), and torchdata's ``StatefulDataLoader`` saves their position
(``state_dict``) with each batch it hands out.
"""

from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

SamplerName = Literal["sequential", "random", "weighted", "subset_random"]
T = TypeVar("T")


class SeededIndex(int):
    """A dataset index (an ``int`` everywhere) that carries the random seed of this one draw of
    the sample to whichever worker loads it: a dataset runs its random transforms under it
    (:func:`call_with_seed`), so augmentation depends neither on the loader workers nor on
    resuming."""

    seed: int

    def __new__(cls, index: int, seed: int) -> "SeededIndex":
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return SeededIndex, (int(self), self.seed)

    def __repr__(self) -> str:
        return f"SeededIndex({int(self)}, seed={self.seed})"


def call_with_seed(function: Callable[..., T], *args: Any, seed: int | None) -> T:
    """``function(*args)`` with torch's CPU generator (torchvision's v2 transforms draw from it)
    seeded by ``seed``, then put back, so the main process's stream does not move."""
    if seed is None:
        return function(*args)
    generator = torch.random.default_generator  # CPU only: CUDA streams untouched
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        return function(*args)
    finally:
        generator.set_state(state)


class EpochSeededSampler(DistributedSampler):
    """Subclasses draw the global order; this class shards it and remembers how far into the
    epoch's shard it got."""

    def __init__(self, num_draws: int, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(range(num_draws), num_replicas=num_replicas, rank=rank, shuffle=False,
                         seed=seed, drop_last=False)
        self.yielded = 0  # indices of this epoch's shard handed out so far
        self._resume_at = 0  # set by load_state_dict: where the next iteration starts

    def global_order(self, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    # A loaded position holds only for the epoch the sampler is set to: Lightning builds a
    # resumed run's loader iterator before its own set_epoch, so whoever restores sets the
    # resumed epoch first (datamodules.base does); an epoch-end state then positions nothing.
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["epoch"] != self.epoch:
            self._resume_at = 0
            return
        if state["num_replicas"] != self.num_replicas:
            raise ValueError(f"the sampler state is for {state['num_replicas']} processes, "
                             f"this run has {self.num_replicas}")
        self._resume_at = state["yielded"]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._resume_at = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[SeededIndex]:
        start, self._resume_at = self._resume_at, 0
        self.yielded = start
        for index in self.shard_of_epoch()[start:]:
            self.yielded += 1
            yield index

    def shard_of_epoch(self) -> list[SeededIndex]:
        """This rank's indices for ``self.epoch``, each with its per-sample seed."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = self.global_order(generator)
        # Pad by repeating the start, as DistributedSampler does: a rank with fewer batches
        # would hang the others.
        while len(order) < self.total_size:
            order = torch.cat([order, order[: self.total_size - len(order)]])
        # One seed per position of the global draw (a row drawn twice is augmented differently,
        # the seeds do not depend on the ranks), drawn after the order, whose stream is unchanged.
        seeds = torch.randint(0, 2**62, (self.total_size,), generator=generator)
        shard = slice(self.rank, self.total_size, self.num_replicas)
        return list(map(SeededIndex, order[shard].tolist(), seeds[shard].tolist()))


class RandomShardSampler(EpochSeededSampler):
    """A fresh permutation of all rows every epoch."""

    def global_order(self, generator: torch.Generator) -> Tensor:
        return torch.randperm(len(self.dataset), generator=generator)
