"""Images/s of the CSV + image-folder pipeline against the obvious alternatives, same files and
same transforms, measured side by side (interleaved repeats, median) in one invocation.

    python benchmarks/data_pipeline.py [--images 2000] [--size 64] [--repeats 5]

Rows:
- bare decode_image loop: ``decode_image`` + transforms in a Python loop, the floor for any
  per-image pipeline;
- ImageCSVDataset: the project's dataset (through a DataLoader, batch 64, main process);
- ImageFolder + PIL: ``torchvision.datasets.ImageFolder`` with its default PIL loader;
- ImageCSVDataset, transforms per batch: the same dataset yielding uint8, with the same
  ToDtype + Normalize run once per batch, as ``eval_batch_transforms`` does in the template;
- decode only: ``decode_image`` vs PIL (open + convert + to tensor) without transforms, to
  show the decoders alone;
- cached + batch augmentation: images decoded once into memory, augmentation on whole batches
  (RandomShiftBatch + RandomHorizontalFlipBatch) vs the per-image equivalent
  (RandomCrop(padding) + RandomHorizontalFlip) on decoded files. Both use the machine's cores:
  the per-image pipeline through DataLoader workers (one per core), the batched one through
  torch's intra-op threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image, write_png
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datamodules.batch_transforms import RandomHorizontalFlipBatch, RandomShiftBatch
from datamodules.image_csv import ImageCSVDataModule, ImageCSVDataset

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def make_images(root: Path, count: int, size: int) -> Path:
    """Smooth random RGB images (compress like photos, unlike noise), in class folders."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(count):
        label = f"class{i % 4}"
        (root / label).mkdir(exist_ok=True)
        low = torch.randint(0, 256, (3, 8, 8), generator=generator, dtype=torch.uint8)
        image = v2.functional.resize(low, [size, size], antialias=True)
        write_png(image, str(root / label / f"{i}.png"))
        rows.append({"path": f"{label}/{i}.png", "label": label})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def eval_transform() -> v2.Transform:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def timed(fn: Callable[[], int]) -> float:
    start = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cores = torch.get_num_threads()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = make_images(root, args.images, args.size)
        frame = pd.read_csv(table)
        paths = [root / p for p in frame["path"]]
        transform = eval_transform()

        def decode_only() -> int:
            for path in paths:
                decode_image(str(path), mode=ImageReadMode.RGB)
            return len(paths)

        def pil_only() -> int:
            for path in paths:
                with Image.open(path) as image:
                    v2.functional.pil_to_tensor(image.convert("RGB"))
            return len(paths)

        def bare_loop() -> int:
            for path in paths:
                transform(decode_image(str(path), mode=ImageReadMode.RGB))
            return len(paths)

        dataset = ImageCSVDataset(paths, None, "RGB", transform)

        def csv_dataset() -> int:
            return sum(len(x) for x, _ in DataLoader(dataset, batch_size=64))

        # The template's own configuration for this: decode per image, and run the same
        # ToDtype + Normalize once per batch (eval_batch_transforms) instead of per image.
        uint8_dataset = ImageCSVDataset(paths, None, "RGB", None)

        def csv_dataset_batch_transforms() -> int:
            return sum(len(transform(x)) for x, _ in DataLoader(uint8_dataset, batch_size=64))

        folder = ImageFolder(str(root), transform=v2.Compose([v2.ToImage(), transform]))

        def image_folder_pil() -> int:
            return sum(len(x) for x, _ in DataLoader(folder, batch_size=64))

        augment = v2.Compose([v2.RandomCrop(args.size, padding=4), v2.RandomHorizontalFlip(),
                              transform])
        per_image = ImageCSVDataset(paths, None, "RGB", augment)

        def decode_per_image_augment() -> int:
            loader = DataLoader(per_image, batch_size=64, num_workers=cores)
            return sum(len(x) for x, _ in loader)

        cached_module = ImageCSVDataModule(table, cache_images=True, num_workers=0,
                                           batch_size=64, split_column=None, test_fraction=0.0,
                                           val_fraction=0.0, validate_images="header",
                                           train_batch_transforms=v2.Identity())
        cached_module.setup("fit")
        batch_augment = v2.Compose([RandomShiftBatch(4), RandomHorizontalFlipBatch(), transform])

        def cached_batch_augment() -> int:
            count = 0
            for images, _ in DataLoader(cached_module.datasets["train"], batch_size=64,
                                        shuffle=True):
                count += len(batch_augment(images))
            return count

        def single_thread(fn: Callable[[], int]) -> Callable[[], int]:
            def run() -> int:
                torch.set_num_threads(1)  # per-image decoding is single-threaded anyway
                try:
                    return fn()
                finally:
                    torch.set_num_threads(cores)
            return run

        runs = {"decode_image alone": single_thread(decode_only),
                "PIL alone": single_thread(pil_only),
                "bare decode_image loop": single_thread(bare_loop),
                "ImageCSVDataset": single_thread(csv_dataset),
                "ImageCSVDataset, transforms per batch":
                    single_thread(csv_dataset_batch_transforms),
                "ImageFolder + PIL": single_thread(image_folder_pil),
                "decoded per image + per-image augmentation": decode_per_image_augment,
                "cached + batch augmentation": cached_batch_augment}
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():  # warm-up: file cache, allocator, lazy imports
            fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                rates[name].append(timed(fn))

    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{args.images} PNG images of {args.size}x{args.size} RGB, batch 64, median of "
          f"{args.repeats} interleaved repeats; rows 1-6 on 1 thread, rows 7-8 on {cores} "
          "cores (loader workers / intra-op threads)\n")
    print("| pipeline | images/s | ratio | target |")
    print("| --- | ---: | --- | --- |")
    rows = [
        ("decode_image alone", None, ""),
        ("PIL alone", "decode_image alone", ""),
        ("bare decode_image loop", None, ""),
        ("ImageCSVDataset", "bare decode_image loop", ">= 0.9x bare loop"),
        ("ImageFolder + PIL", "ImageCSVDataset", "ImageCSVDataset >= 2x this"),
        ("ImageCSVDataset, transforms per batch", "ImageFolder + PIL", ">= 2x ImageFolder + PIL"),
        ("decoded per image + per-image augmentation", None, ""),
        ("cached + batch augmentation", "decoded per image + per-image augmentation",
         ">= 10x per-image"),
    ]
    for name, versus, target in rows:
        if versus is None:
            ratio = ""
        elif name in ("ImageFolder + PIL", "PIL alone"):
            ratio = f"{versus.split(' ')[0]} is {median[versus] / median[name]:.2f}x"
        else:
            ratio = f"{median[name] / median[versus]:.2f}x"
        print(f"| {name} | {median[name]:,.0f} | {ratio} | {target} |")


if __name__ == "__main__":
    main()
