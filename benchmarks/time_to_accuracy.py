"""Test accuracy and wall time of `python train.py` (the default config, unchanged) over several
seeds, next to an SVC and a logistic regression trained on the same split.

    python benchmarks/time_to_accuracy.py [--seeds 0 1 2] [--config configs/x.yaml]

Each seed is a separate `python train.py --seed S` process, as a user runs it; the wall time
includes interpreter start and imports. The metrics come from the run's summary.json.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def train_once(seed: int, workdir: Path, extra: list[str]) -> tuple[dict, float]:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"--seed={seed}",
         "--trainer.enable_progress_bar=false", *extra],
        cwd=workdir, check=True, capture_output=True, text=True,
    )
    wall = time.perf_counter() - start
    newest = max(workdir.glob("logs/*/version_*/summary.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(newest.read_text()), wall


def sklearn_baselines(digits_root: Path) -> dict[str, float]:
    """SVC(gamma=0.001) and logistic regression on the same PNG files and split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    from datamodules.digits import DigitsDataModule

    data = DigitsDataModule(root=digits_root, num_workers=0)
    data.setup("fit")

    def arrays(split: str) -> tuple:
        dataset = data.datasets[split]
        images = [dataset[i][0].flatten().numpy() * 16 for i in range(len(dataset))]
        return images, dataset.targets.numpy()

    (x_train, y_train), (x_test, y_test) = arrays("train"), arrays("test")
    # The split's validation rows are not used for training by these baselines either.
    return {
        "SVC(gamma=0.001)": SVC(gamma=0.001).fit(x_train, y_train).score(x_test, y_test),
        "LogisticRegression": LogisticRegression(max_iter=5000)
        .fit(x_train, y_train).score(x_test, y_test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", action="append", default=[])
    args = parser.parse_args()
    extra = [f"--config={Path(c).resolve()}" for c in args.config]

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        results = [train_once(seed, workdir, extra) for seed in args.seeds]
        baselines = sklearn_baselines(workdir / "data" / "digits") if not args.config else {}

    accuracies = [r["metrics"]["test/acc"] for r, _ in results]
    print(f"`python train.py {' '.join(extra)}`, seeds {args.seeds}\n")
    print("| model | test accuracy, mean | min | fit s (mean) | wall s per run (mean) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    fit = statistics.mean(r["fit_seconds"] for r, _ in results)
    wall = statistics.mean(w for _, w in results)
    print(f"| template default | {100 * statistics.mean(accuracies):.2f} % | "
          f"{100 * min(accuracies):.2f} % | {fit:.1f} | {wall:.1f} |")
    for name, score in baselines.items():
        print(f"| {name} (same split) | {100 * score:.2f} % | | | |")
    print("\nper seed: " + ", ".join(f"{s}: {100 * a:.2f} %"
                                     for s, a in zip(args.seeds, accuracies, strict=True)))


if __name__ == "__main__":
    main()
