"""Each task's example config trained by `python train.py` (the template's module for the task,
as a user runs it), next to a simple scikit-learn baseline fit on the same training split and
scored on the same test split with the same torchmetrics definitions.

    python benchmarks/tasks.py [--seeds 0 1] [--tasks regression multilabel segmentation]

| task | data (scikit-learn's bundled sets) | baseline |
| --- | --- | --- |
| multiclass | the 8x8 digits (the default run) | LogisticRegression on the pixels |
| regression | diabetes: 10 measurements -> progression (25-346) | LinearRegression |
| multilabel | digits tagged `even` / `large` (>= 5) | one-vs-rest LogisticRegression |
| segmentation | digit strokes labelled by their digit | see below |

The segmentation baseline knows the threshold the masks were made with: its strokes are
exact, and each image's strokes get the digit a LogisticRegression predicts from the pixels.

Each run is its own process; metrics come from its summary.json, the wall time is the fit's.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EXAMPLES = REPO / "configs" / "examples"
CONFIGS = {"multiclass": [], "regression": ["--config", str(EXAMPLES / "diabetes.yaml")],
           "multilabel": ["--config", str(EXAMPLES / "digit_tags.yaml")],
           "segmentation": ["--config", str(EXAMPLES / "digit_strokes.yaml")]}
METRICS = {"multiclass": ["acc", "f1"], "regression": ["mae", "rmse", "r2"],
           "multilabel": ["f1", "map"], "segmentation": ["miou", "dice"]}


def train(task: str, seed: int, workdir: Path) -> tuple[dict[str, Any], Path]:
    logs = workdir / f"{task}_{seed}"
    done = subprocess.run([sys.executable, str(REPO / "train.py"), *CONFIGS[task],
                           f"--seed={seed}", f"--trainer.logger.init_args.save_dir={logs}",
                           "--trainer.enable_progress_bar=false"],
                          cwd=workdir, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{task}, seed {seed}: train.py failed:\n{done.stderr[-2000:]}")
    (summary,) = logs.glob("*/version_*/summary.json")
    return json.loads(summary.read_text()), summary.parent


def split_arrays(run: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The inputs (flattened) and targets of a split, from the run's own saved config."""
    from sweeps.train_config import datamodule_from

    data = datamodule_from(yaml.safe_load((run / "config.yaml").read_text())["data"])
    data.prepare_data()
    data.setup("fit")
    dataset = data.datasets[split]
    items = [dataset[i] for i in range(len(dataset))]
    inputs = np.stack([x.flatten().float().numpy() for x, _ in items])
    targets = np.stack([y.numpy() for _, y in items])
    return inputs, targets


def baseline(task: str, run: Path) -> dict[str, float]:
    """The baseline's test metrics, with torchmetrics' definitions (as the modules log them)."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from torchmetrics.functional import mean_absolute_error, mean_squared_error, r2_score
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_f1_score,
        multilabel_average_precision,
        multilabel_f1_score,
    )
    from torchmetrics.functional.segmentation import dice_score, mean_iou

    x_train, y_train = split_arrays(run, "train")
    x_test, y_test = split_arrays(run, "test")
    t = torch.as_tensor
    if task == "regression":
        predicted = t(LinearRegression().fit(x_train, y_train).predict(x_test)).float()
        target = t(y_test).float()
        return {"mae": float(mean_absolute_error(predicted, target)),
                "rmse": float(mean_squared_error(predicted, target, squared=False)),
                "r2": float(r2_score(predicted, target))}
    if task == "multiclass":
        predicted = t(LogisticRegression(max_iter=5000).fit(x_train, y_train).predict(x_test))
        return {"acc": float(multiclass_accuracy(predicted, t(y_test), 10, average="micro")),
                "f1": float(multiclass_f1_score(predicted, t(y_test), 10, average="macro"))}
    if task == "multilabel":
        model = OneVsRestClassifier(LogisticRegression(max_iter=5000)).fit(x_train, y_train)
        probs, target = t(model.predict_proba(x_test)).float(), t(y_test).long()
        labels = target.shape[1]
        return {"f1": float(multilabel_f1_score(probs, target, labels, average="macro")),
                "map": float(multilabel_average_precision(probs, target, labels,
                                                          average="macro"))}
    # segmentation: the digit from the whole image, painted on the thresholded strokes
    from datamodules.examples import STROKE_THRESHOLD

    digits_train = y_train.reshape(len(y_train), -1).max(axis=1) - 1
    classifier = LogisticRegression(max_iter=5000).fit(x_train, digits_train)
    digit = t(classifier.predict(x_test))
    strokes = t(x_test.reshape(y_test.shape) * 255 > STROKE_THRESHOLD)
    predicted = (strokes * (digit[:, None, None] + 1)).long()
    target = t(y_test).long()
    classes = 11
    return {"miou": float(mean_iou(predicted, target, classes, input_format="index").mean()),
            "dice": float(dice_score(predicted, target, classes, input_format="index",
                                     average="macro").mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tasks", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    options = parser.parse_args()
    print("| task | metric | template (test, per seed) | baseline (test) | fit wall |")
    print("| --- | --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        for task in options.tasks:
            runs = [train(task, seed, workdir) for seed in options.seeds]
            reference = baseline(task, runs[0][1])
            wall = statistics.median(s["fit_seconds"] for s, _ in runs)
            for name in METRICS[task]:
                values = [s["metrics"].get(f"test/{name}") for s, _ in runs]
                shown = " / ".join(f"{v:.4f}" for v in values if v is not None) or "not logged"
                print(f"| {task} | {name} | {shown} | {reference[name]:.4f} | {wall:.1f} s |")


if __name__ == "__main__":
    main()
