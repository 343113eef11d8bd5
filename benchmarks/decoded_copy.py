"""What the decoded copy of the image cache (``datamodules/decoded_copy.py``) saves: a run's
data set-up with the images decoded from their files against the same set-up loading the copy
an earlier run kept, on folders generated here.

    python benchmarks/decoded_copy.py [--rounds 5]

- decode: the copy left out (``datamodules.image_csv.copy_path`` made to find none, in
  this process only): every file decoded into the cache;
- copy: after a first run, the decoded copy found unchanged and memory-mapped.

Both build an ``ImageCSVDataModule`` with ``cache_images: true`` and ``remember_checks: true``
(the same file check for both: the record of checked files, found unchanged, so the time
difference is the decoding) and ToDtype + Normalize per image, and time ``prepare_data`` +
``setup("fit")`` in this process, alternating; medians of the rounds.
"""

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torchvision.io import write_jpeg, write_png
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FOLDERS = {  # name: (images, side, channels, format)
    "5,000 28x28 gray PNGs (benchmarks/user_folder.py)": (5000, 28, 1, "png"),
    "2,000 128x128 RGB JPEGs": (2000, 128, 3, "jpg"),
}


def make_folder(root: Path, count: int, side: int, channels: int, suffix: str) -> Path:
    generator = torch.Generator().manual_seed(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(count):
        # Smooth content (a gradient plus noise), so files compress like photos, not like noise.
        ramp = torch.linspace(0, 200, side).expand(side, side)
        noise = torch.randint(0, 40, (channels, side, side), generator=generator)
        image = (ramp + noise).clamp(0, 255).to(torch.uint8)
        path = root / "images" / f"{i:05d}.{suffix}"
        (write_png if suffix == "png" else write_jpeg)(image, str(path))
        rows.append({"path": f"images/{i:05d}.{suffix}", "label": i % 10})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def set_up(table: Path, channels: int, use_copy: bool) -> float:
    from datamodules import image_csv
    from datamodules.decoded_copy import copy_path
    from datamodules.image_csv import ImageCSVDataModule

    image_csv.copy_path = copy_path if use_copy else (lambda *args: None)

    per_image = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize([0.5] * channels, [0.25] * channels)])
    data = ImageCSVDataModule(table, read_mode="GRAY" if channels == 1 else "RGB",
                              cache_images=True, train_transforms=per_image,
                              eval_transforms=per_image, num_workers=0, batch_size=64)
    gc.collect()  # the earlier rounds' modules: not this round's time
    start = time.perf_counter()
    data.prepare_data()
    data.setup("fit")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the cache's info line
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        os.environ["XDG_CACHE_HOME"] = str(Path(folder) / "cache")
        for name, (count, side, channels, suffix) in FOLDERS.items():
            table = make_folder(Path(folder) / suffix, count, side, channels, suffix)
            set_up(table, channels, use_copy=True)  # the first run: checks, decodes, keeps
            set_up(table, channels, use_copy=False)  # warm-up: the first rounds run slower
            times: dict[bool, list[float]] = {False: [], True: []}
            for round_ in range(options.rounds):
                for use_copy in ((False, True) if round_ % 2 == 0 else (True, False)):
                    times[use_copy].append(set_up(table, channels, use_copy))
            decode, copy = (statistics.median(times[k]) for k in (False, True))
            rows.append((name, decode, copy, count))
    print(f"data set-up (prepare_data + setup), seconds, median of {options.rounds} "
          "alternating rounds\n")
    print("| folder | decode every file | load the decoded copy | saved per image |")
    print("| --- | ---: | ---: | ---: |")
    for name, decode, copy, count in rows:
        print(f"| {name} | {decode:.3f} | {copy:.3f} | {(decode - copy) / count * 1e6:.0f} µs |")


if __name__ == "__main__":
    main()
