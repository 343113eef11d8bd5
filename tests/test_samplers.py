"""Training samplers: one draw per (seed, epoch) shared by every rank, disjoint shards, and class
balance for ``weighted`` — in one process and in a real 2-process DDP run."""

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchvision.io import write_png

from datamodules.image_csv import ImageCSVDataModule
from datamodules.optional_samplers import (
    SequentialShardSampler,
    SubsetRandomShardSampler,
    WeightedShardSampler,
    class_balanced_weights,
)
from datamodules.samplers import EpochSeededSampler, RandomShardSampler
from tests.conftest import REPO, run_train_subprocess

SAMPLERS = ("sequential", "random", "weighted", "subset_random")
# 70 / 20 / 10 % class imbalance in the training split.
TRAIN_COUNTS = {"a": 42, "b": 12, "c": 6}


def imbalanced_images(root: Path) -> Path:
    rows = []
    for label, count in TRAIN_COUNTS.items():
        for split, n in (("train", count), ("val", 2), ("test", 2)):
            rows += [{"label": label, "split": split} for _ in range(n)]
    (root / "img").mkdir()
    for i, row in enumerate(rows):
        row["path"] = f"img/{i}.png"
        write_png(torch.full((1, 4, 4), i % 256, dtype=torch.uint8), str(root / row["path"]))
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def shards(make: Any, replicas: int, epoch: int) -> list[list[int]]:
    out = []
    for rank in range(replicas):
        sampler = make(rank)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


def interleave(per_rank: list[list[int]]) -> list[int]:
    return [i for step in zip(*per_rank, strict=True) for i in step]


MAKERS = {
    "sequential": lambda n, **kw: SequentialShardSampler(n, **kw),
    "random": lambda n, **kw: RandomShardSampler(n, **kw),
    "weighted": lambda n, **kw: WeightedShardSampler(torch.linspace(1, 2, n), **kw),
    "subset_random": lambda n, **kw: SubsetRandomShardSampler(torch.arange(0, n, 2), **kw),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_ranks_split_one_shared_draw_that_changes_per_epoch_and_repeats_per_seed(name: str) -> None:
    make = MAKERS[name]
    n = 21  # odd: the shards need one padded index

    def sampler_for(seed: int) -> Any:
        return lambda rank: make(n, num_replicas=2, rank=rank, seed=seed)

    single = make(n, num_replicas=1, rank=0, seed=5)
    single.set_epoch(3)
    per_rank = shards(sampler_for(5), 2, epoch=3)

    assert len(per_rank[0]) == len(per_rank[1]) == len(single.dataset) // 2 + len(
        single.dataset) % 2
    global_draw = list(single)
    assert interleave(per_rank) == (global_draw + global_draw)[: 2 * len(per_rank[0])]
    assert shards(sampler_for(5), 2, epoch=3) == per_rank  # same seed, same draw
    if name != "sequential":
        assert shards(sampler_for(5), 2, epoch=4) != per_rank  # a new draw every epoch
        assert shards(sampler_for(6), 2, epoch=3) != per_rank  # and per seed
    if name in ("random", "sequential", "subset_random"):  # without replacement
        assert len(set(global_draw)) == len(global_draw)


def test_weighted_sampler_balances_classes_and_subset_keeps_its_rows() -> None:
    targets = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    sampler = WeightedShardSampler(class_balanced_weights(targets), num_draws=3000, seed=1)
    shares = torch.bincount(targets[list(sampler)], minlength=3) / 3000
    assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.04), shares

    subset = SubsetRandomShardSampler(torch.tensor([3, 5, 7]), seed=0)
    assert sorted(subset) == [3, 5, 7]
    with pytest.raises(ValueError, match="finite, non-negative"):
        WeightedShardSampler(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize("name", SAMPLERS)
def test_datamodule_builds_each_sampler_in_one_process(tmp_path: Path, name: str) -> None:
    data = ImageCSVDataModule(imbalanced_images(tmp_path), split_column="split",
                              sampler=name, subset_fraction=0.5, num_workers=0, batch_size=4)
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, EpochSeededSampler)
    train_size = sum(TRAIN_COUNTS.values())
    seen = [int(i) for i in loader.sampler]
    expected = train_size // 2 if name == "subset_random" else train_size
    assert len(seen) == expected
    if name == "sequential":
        assert seen == list(range(train_size))


class RecordDraws(Callback):
    """Writes, per rank: the targets of every training batch the model saw, and the indices each
    sampler type draws on this rank each epoch (built by the datamodule with the real rank)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.batches: list[list[int]] = []
        self.draws: dict[str, list[list[int]]] = {name: [] for name in SAMPLERS}
        self.loader_sampler = ""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        data = trainer.datamodule
        self.loader_sampler = type(trainer.train_dataloader.sampler).__name__
        configured = data.sampler
        for name in SAMPLERS:
            data.sampler = name
            sampler = data.train_sampler()
            sampler.set_epoch(trainer.current_epoch)
            self.draws[name].append([int(i) for i in sampler])
        data.sampler = configured

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.batches.append(batch[1].tolist())

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        record = {"batches": self.batches, "draws": self.draws,
                  "loader_sampler": self.loader_sampler, "world_size": trainer.world_size}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
@pytest.mark.ddp
def test_samplers_in_a_real_two_process_run_shard_one_draw_and_weighted_balances(
    tmp_path: Path,
) -> None:
    table = imbalanced_images(tmp_path)
    epochs = 3
    result = run_train_subprocess([
        "fit", f"--config={REPO / 'configs' / 'digits.yaml'}",  # the digits run's model
        "--devices=2", f"--max_epochs={epochs}", "--seed=11",
        "--data=datamodules.image_csv.ImageCSVDataModule", f"--data.annotations={table}",
        "--data.read_mode=GRAY", "--data.split_column=split", "--data.sampler=weighted",
        "--data.batch_size=4", "--data.num_workers=0",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=tests.test_samplers.RecordDraws",
        f"--trainer.callbacks.out_dir={tmp_path}",
    ], cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    train_size = sum(TRAIN_COUNTS.values())

    assert all(r["world_size"] == 2 for r in ranks)
    # Lightning used the sampler as is, not wrapped in DistributedSamplerWrapper.
    assert all(r["loader_sampler"] == "WeightedShardSampler" for r in ranks)
    for name in SAMPLERS:
        for epoch in range(epochs):
            per_rank = [r["draws"][name][epoch] for r in ranks]
            assert len(per_rank[0]) == len(per_rank[1])  # same number of batches per rank
            if name != "weighted":  # drawn without replacement: shards are disjoint
                assert set(per_rank[0]).isdisjoint(per_rank[1]), (name, epoch)
            if name in ("random", "sequential"):
                assert set(per_rank[0]) | set(per_rank[1]) == set(range(train_size))
            if name == "subset_random":
                assert len(set(per_rank[0]) | set(per_rank[1])) == train_size
        if name != "sequential":
            assert ranks[0]["draws"][name][0] != ranks[0]["draws"][name][1], name

    # The batches the model trained on are class-balanced although the data is 70/20/10:
    # 3 epochs x 60 draws, each class's share within 0.12 of 1/3 (about 3 standard deviations).
    seen = Counter(t for r in ranks for batch in r["batches"] for t in batch)
    total = sum(seen.values())
    assert total == epochs * train_size
    for label in range(3):
        assert abs(seen[label] / total - 1 / 3) < 0.12, seen
