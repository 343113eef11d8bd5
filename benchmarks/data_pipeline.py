"""Images/s of the CSV + image-folder pipeline against the obvious alternatives, same files and
same transforms, measured side by side (interleaved repeats, median) in one invocation.

    python benchmarks/data_pipeline.py [--images 2000] [--size 64] [--repeats 5]

"The same transforms" means uint8 -> float32 in [0, 1] -> per-channel normalisation everywhere:
as ``v2.ToDtype(scale=True)`` + ``v2.Normalize`` (what most code writes), or as this project's
``ToFloatNormalize``, which computes the same values (to 1e-6) in two passes instead of four.
Rows:
- decode only: ``decode_image`` vs PIL (open + convert + to tensor) without transforms, to
  show the decoders alone;
- bare decode_image loop: ``decode_image`` + per-image transforms in a Python loop, the floor
  for any per-image pipeline;
- ImageCSVDataset: the project's dataset with the same per-image transforms, through a
  DataLoader (batch 64, main process); next to it a minimal Dataset doing only the bare loop's
  work through the same DataLoader, to separate the dataset's cost from batching (collate);
- ImageFolder + PIL: ``torchvision.datasets.ImageFolder`` with its default PIL loader, with
  either transform;
- ImageCSVDataset, transforms per batch: the dataset yields uint8 and the normalisation runs
  once per batch, as the template's ``eval_batch_transforms`` do;
- cached + batch augmentation: ``ImageCSVDataModule(cache_images=True)``'s own train loader
  (images decoded once, sampler, collate) with augmentation on whole batches (RandomShiftBatch
  + RandomHorizontalFlipBatch + ToFloatNormalize), vs the per-image equivalent (RandomCrop with
  padding + RandomHorizontalFlip + ToDtype + Normalize) on decoded files.
Every row runs in the main process on one thread: equal resources for every pipeline, and far
less noise on a shared machine than racing worker processes and intra-op threads. Rates are per
second of the process's CPU time (see ``timed``).
"""

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
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image, write_png
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datamodules.batch_transforms import (
    RandomHorizontalFlipBatch,
    RandomShiftBatch,
    ToFloatNormalize,
)
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


class MinimalDataset(Dataset):
    """The bare loop's work as a Dataset: what batching through a DataLoader costs by itself."""

    def __init__(self, files: list[str], transform: v2.Transform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(decode_image(self.files[index], mode=ImageReadMode.RGB)), 0


def fused_transform() -> v2.Transform:
    return ToFloatNormalize(MEAN, STD)


def timed(fn: Callable[[], int]) -> float:
    """Images per second of this process's CPU time: all the work runs here on one thread (the
    files are in the page cache after the warm-up), so it equals wall time on an idle machine
    and is not inflated by other processes on a shared one."""
    start = time.process_time()
    count = fn()
    return count / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # see the module docstring

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
        minimal = MinimalDataset([str(p) for p in paths], transform)

        def csv_dataset() -> int:
            return sum(len(x) for x in DataLoader(dataset, batch_size=64))  # no targets: images

        def minimal_dataset() -> int:
            return sum(len(x) for x, _ in DataLoader(minimal, batch_size=64))

        # The template's own configuration for this: decode per image, and run the same
        # ToDtype + Normalize once per batch (eval_batch_transforms) instead of per image.
        uint8_dataset = ImageCSVDataset(paths, None, "RGB", None)

        def csv_dataset_batch_transforms() -> int:
            return sum(len(transform(x)) for x in DataLoader(uint8_dataset, batch_size=64))

        fused = fused_transform()

        def csv_dataset_batch_fused() -> int:
            return sum(len(fused(x)) for x in DataLoader(uint8_dataset, batch_size=64))

        folder = ImageFolder(str(root), transform=v2.Compose([v2.ToImage(), transform]))
        folder_fused = ImageFolder(str(root), transform=v2.Compose([v2.ToImage(), fused]))

        def image_folder_pil() -> int:
            return sum(len(x) for x, _ in DataLoader(folder, batch_size=64))

        def image_folder_pil_fused() -> int:
            return sum(len(x) for x, _ in DataLoader(folder_fused, batch_size=64))

        augment = v2.Compose([v2.RandomCrop(args.size, padding=4), v2.RandomHorizontalFlip(),
                              transform])
        per_image = ImageCSVDataset(paths, None, "RGB", augment)

        def decode_per_image_augment() -> int:
            return sum(len(x) for x in DataLoader(per_image, batch_size=64))

        batch_augment = v2.Compose([RandomShiftBatch(4), RandomHorizontalFlipBatch(),
                                    fused_transform()])
        cached_module = ImageCSVDataModule(table, cache_images=True, num_workers=0,
                                           batch_size=64, split_column=None, test_fraction=0.0,
                                           val_fraction=0.0, validate_images="header",
                                           train_batch_transforms=batch_augment,
                                           eval_batch_transforms=fused_transform())
        cached_module.setup("fit")

        def cached_batch_augment() -> int:
            # What fit does per batch: the module's loader, then the train batch transforms
            # (on_after_batch_transfer picks them only while a trainer is training).
            count = 0
            for batch in cached_module.train_dataloader():
                images = cached_module.train_batch_transforms(batch[0])
                count += len(images)
            return count

        runs = {"decode_image alone": decode_only,
                "PIL alone": pil_only,
                "bare decode_image loop": bare_loop,
                "ImageCSVDataset": csv_dataset,
                "minimal Dataset, same DataLoader": minimal_dataset,
                "ImageCSVDataset, ToDtype + Normalize per batch":
                    csv_dataset_batch_transforms,
                "ImageCSVDataset, ToFloatNormalize per batch":
                    csv_dataset_batch_fused,
                "ImageFolder + PIL": image_folder_pil,
                "ImageFolder + PIL, ToFloatNormalize per image":
                    image_folder_pil_fused,
                "decoded per image + per-image augmentation": decode_per_image_augment,
                "cached + batch augmentation": cached_batch_augment}
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():  # warm-up: file cache, allocator, lazy imports
            fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                rates[name].append(timed(fn))

    median = {name: statistics.median(values) for name, values in rates.items()}

    def ratio(name: str, versus: str) -> float:
        """Median over repeats of the ratio within a repeat: the machine's speed drifts by
        ~10 % over minutes, and rows measured seconds apart see nearly the same speed."""
        return statistics.median(a / b for a, b in zip(rates[name], rates[versus], strict=True))

    print(f"{args.images} PNG images of {args.size}x{args.size} RGB, batch 64, median of "
          f"{args.repeats} interleaved repeats, main process, 1 thread, per CPU second; ratios "
          "are medians of the ratio within each repeat\n")
    print("| pipeline | images/s | ratio | target |")
    print("| --- | ---: | --- | --- |")
    rows = [
        ("decode_image alone", None, ""),
        ("PIL alone", "decode_image alone", ""),
        ("bare decode_image loop", None, ""),
        ("ImageCSVDataset", "bare decode_image loop", ">= 0.9x bare loop"),
        ("minimal Dataset, same DataLoader", "bare decode_image loop", ""),
        ("ImageFolder + PIL", "ImageCSVDataset", ""),
        ("ImageFolder + PIL, ToFloatNormalize per image", None, ""),
        ("ImageCSVDataset, ToDtype + Normalize per batch", "ImageFolder + PIL",
         ">= 2x ImageFolder + PIL"),
        ("ImageCSVDataset, ToFloatNormalize per batch", "ImageFolder + PIL",
         ">= 2x ImageFolder + PIL"),
        ("decoded per image + per-image augmentation", None, ""),
        ("cached + batch augmentation", "decoded per image + per-image augmentation",
         ">= 10x per-image"),
    ]
    for name, versus, target in rows:
        if versus is None:
            text = ""
        elif name in ("ImageFolder + PIL", "PIL alone"):
            text = f"{versus.split(' ')[0]} is {ratio(versus, name):.2f}x"
        else:
            text = f"{ratio(name, versus):.2f}x"
        print(f"| {name} | {median[name]:,.0f} | {text} | {target} |")


if __name__ == "__main__":
    main()
