"""What exact resume costs: the resumable training loader (torchdata's ``StatefulDataLoader``,
which records its position) against a plain ``DataLoader``, and one step checkpoint.

    python benchmarks/resume.py [--repeats 5] [--epochs 5] [--threads 1]

1. **Loader alone**: every training batch of ``--epochs`` epochs, read through the datamodule's
   ``train_dataloader()`` (same dataset, sampler, batch size and workers; only the loader class
   differs, the name ``datamodules.base.ResumableLoader`` swapped for the run: the template's
   ``ResumableLoader`` or a plain ``DataLoader``):
   - the digits default: cached uint8 images, batch 16, no loader workers;
   - 2,000 64x64 RGB PNGs decoded per sample with a random crop + flip, batch 64, 2 workers.
2. **The default run**: ``train.py``'s fit (the clock of ``benchmarks/overhead.py``: data
   reading left out) with each loader class.
3. **Step checkpoints**: the default run with ``--checkpoint.every_n_train_steps=1`` against
   none; the difference over the number of steps is the cost of one ``last.ckpt`` write
   (weights, optimizer, loader position, written to a temporary file and renamed).

The variants alternate within each round, which one goes first alternating between rounds;
ratios are medians of per-round ratios (``overhead.paired_ratio``), times medians over rounds.
"""

import argparse
import contextlib
import io
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from data_pipeline import make_images  # noqa: E402
from overhead import default_recipe_data, fit_clock, paired_ratio, redirected_to_file  # noqa: E402

import datamodules.base  # noqa: E402
import train  # noqa: E402
from datamodules.base import ResumableLoader, TableDataModule  # noqa: E402
from datamodules.image_csv import ImageCSVDataModule  # noqa: E402

LOADERS: dict[str, type[DataLoader]] = {"plain DataLoader": DataLoader,
                                        "resumable (StatefulDataLoader)": ResumableLoader}


@contextlib.contextmanager
def training_loader_class(loader_class: type[DataLoader]) -> Iterator[None]:
    original = datamodules.base.ResumableLoader
    datamodules.base.ResumableLoader = loader_class
    try:
        yield
    finally:
        datamodules.base.ResumableLoader = original


def read_epochs(data: TableDataModule, epochs: int) -> tuple[float, int]:
    """Seconds to read every training batch of ``epochs`` epochs, and the batch count."""
    loader = data.train_dataloader()
    batches = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for _ in loader:
            batches += 1
    return time.perf_counter() - start, batches


def png_data(root: Path) -> ImageCSVDataModule:
    root.mkdir(parents=True, exist_ok=True)
    table = make_images(root, count=2000, size=64)
    augment = v2.Compose([v2.RandomCrop(56), v2.RandomHorizontalFlip(),
                          v2.ToDtype(torch.float32, scale=True)])
    data = ImageCSVDataModule(annotations=table, batch_size=64, num_workers=2,
                              cache_images=False, train_transforms=augment,
                              eval_transforms=v2.ToDtype(torch.float32, scale=True))
    data.setup("fit")
    return data


def default_run(data_root: Path, logs: Path, epochs: int, extra: list[str]) -> tuple[float, int]:
    args = ["fit", f"--data.init_args.root={data_root}", f"--max_epochs={epochs}",
            f"--trainer.logger.init_args.save_dir={logs}", f"--trainer.default_root_dir={logs}",
            *extra]
    with redirected_to_file(), fit_clock() as clock, contextlib.redirect_stderr(io.StringIO()):
        cli = train.main(args)
    return clock.seconds, cli.trainer.global_step


def measure(repeats: int, epochs: int, workdir: Path) -> dict[str, dict[str, list[float]]]:
    digits_root = workdir / "digits"
    digits = default_recipe_data(digits_root)
    pngs = png_data(workdir / "pngs")
    logs = workdir / "logs"
    steps: dict[str, int] = {}

    def loader_variant(data: TableDataModule, loader: type[DataLoader]
                       ) -> Callable[[], float]:
        def run() -> float:
            with training_loader_class(loader):
                seconds, batches = read_epochs(data, epochs)
            return seconds / batches
        return run

    def run_variant(loader: type[DataLoader], extra: list[str]) -> Callable[[], float]:
        def run() -> float:
            with training_loader_class(loader):
                seconds, steps["default run"] = default_run(digits_root, logs, epochs, extra)
            return seconds
        return run

    groups: dict[str, dict[str, Callable[[], float]]] = {
        "digits default (cached, batch 16, 0 workers): per batch": {
            name: loader_variant(digits, loader) for name, loader in LOADERS.items()},
        "64x64 PNGs (decoded + augmented, batch 64, 2 workers): per batch": {
            name: loader_variant(pngs, loader) for name, loader in LOADERS.items()},
        "default run, fit s": {
            name: run_variant(loader, []) for name, loader in LOADERS.items()},
        "default run with a last.ckpt write every step, fit s": {
            "no step checkpoints": run_variant(ResumableLoader, []),
            "every step": run_variant(ResumableLoader,
                                      ["--checkpoint.every_n_train_steps=1"])},
    }
    for variants in groups.values():  # warm-up: first-call costs, page cache
        for run in variants.values():
            run()
    times = {group: {name: [] for name in variants} for group, variants in groups.items()}
    for round_ in range(repeats):
        for group, variants in groups.items():
            # Alternate which variant goes first: the first run after another group's pays
            # for changing caches (and, after the PNG loader, for its workers' exit).
            order = list(variants.items())[:: 1 if round_ % 2 == 0 else -1]
            for name, run in order:
                times[group][name].append(run())
        print(f"round {round_ + 1}/{repeats} done", file=sys.stderr, flush=True)
    times["steps"] = {"default run": [float(steps["default run"])]}
    return times


def print_tables(times: dict[str, dict[str, list[float]]], epochs: int) -> None:
    steps = int(times.pop("steps")["default run"][0])
    rounds = len(next(iter(next(iter(times.values())).values())))
    print(f"{epochs} epochs, {rounds} alternating rounds, {torch.get_num_threads()} torch "
          "threads; ratio: median over rounds of the ratio within the round\n")
    print("| what | plain / none | stateful / every step | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for group, variants in times.items():
        first, second = variants
        a, b = statistics.median(variants[first]), statistics.median(variants[second])
        unit = "ms" if "per batch" in group else "s"
        scale = 1000 if unit == "ms" else 1
        print(f"| {group} | {a * scale:.3f} {unit} | {b * scale:.3f} {unit} | "
              f"{paired_ratio(variants, second, first):.3f}x |")
    checkpoints = times["default run with a last.ckpt write every step, fit s"]
    per_write = statistics.median(
        (every - none) / steps for every, none in zip(checkpoints["every step"],
                                                      checkpoints["no step checkpoints"],
                                                      strict=True))
    print(f"\none last.ckpt write inside an epoch: {per_write * 1000:.1f} ms "
          f"(median over rounds of the fit-time difference / {steps} steps)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads; 1 keeps timings stable on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        times = measure(args.repeats, args.epochs, Path(tmp))
    print_tables(times, args.epochs)


if __name__ == "__main__":
    main()
