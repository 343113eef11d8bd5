"""Start-up time: ``python train.py --help`` against importing LightningCLI alone, the floor any
LightningCLI script pays before it can parse an option.

    python benchmarks/startup.py [--repeats 5]

Each command is a fresh interpreter (as a user runs it), alternated within each round; the
table gives the median and the minimum wall time.
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMANDS = {
    "python -c 'import lightning.pytorch.cli'": [sys.executable, "-c",
                                                 "import lightning.pytorch.cli"],
    "python train.py --help": [sys.executable, str(REPO / "train.py"), "--help"],
}


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for command in COMMANDS.values():  # warm the file cache
        wall_time(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(wall_time(command))
    floor = statistics.median(next(iter(times.values())))
    print(f"median and min of {args.repeats} alternating runs, fresh interpreter each\n")
    print("| command | wall s (median) | min | vs import |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.2f} | {min(values):.2f} | {median / floor:.2f}x |")


if __name__ == "__main__":
    main()
