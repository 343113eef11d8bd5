"""What the pre-flight image check costs per file, first and on the next run (the record of
checked files), on a folder of small PNGs generated here.

    python benchmarks/preflight.py [--files 100000] [--size 28]

Each pass is a fresh ``ImageCSVDataModule`` reading the table and checking every file, as a
run does before its first step: ``validate_images: full`` (header and full decode) with
``cache_images: false``, so the check alone is timed. The first pass checks and records; the
second finds every file unchanged. Printed: seconds, microseconds per file, and what 1,000,000
files would take at that rate.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_folder(root: Path, files: int, size: int) -> Path:
    import pandas as pd
    import torch
    from torchvision.io import encode_png

    (root / "img").mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(files):
        pixels = torch.randint(0, 256, (1, size, size), dtype=torch.uint8, generator=generator)
        (root / "img" / f"{i:06d}.png").write_bytes(encode_png(pixels).numpy().tobytes())
        rows.append({"path": f"img/{i:06d}.png", "label": i % 10})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def check_pass(table: Path) -> float:
    from datamodules.image_csv import ImageCSVDataModule

    start = time.perf_counter()
    ImageCSVDataModule(table, read_mode="GRAY", cache_images=False, validate_images="full",
                       num_workers=0).table_and_splits()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=28)
    options = parser.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as folder:
        os.environ["XDG_CACHE_HOME"] = str(Path(folder) / "cache")  # a fresh record
        start = time.perf_counter()
        table = make_folder(Path(folder) / "data", options.files, options.size)
        made = time.perf_counter() - start
        first, again = check_pass(table), check_pass(table)
    print(f"{options.files:,} {options.size}x{options.size} gray PNGs (written in {made:.0f} s), "
          f"{os.cpu_count()} CPUs; validate_images: full")
    print("| pass | seconds | us per file | 1,000,000 files |")
    print("| --- | ---: | ---: | ---: |")
    for name, seconds in (("first (checks and records)", first),
                          ("next run (record, nothing changed)", again)):
        per_file = seconds / options.files
        print(f"| {name} | {seconds:.1f} | {per_file * 1e6:.0f} | {per_file * 1e6 / 60:.1f} min |")


if __name__ == "__main__":
    main()
