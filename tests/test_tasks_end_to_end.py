"""Every task end to end through real ``train.py`` processes, with the template's module for
the task and with a module written in the test's folder as a user would (its own metric names,
lazy layers, no ``test_step``): fit, test, predict and export; two DDP processes; an exact
mid-epoch resume after kill -9; and ``sweep.py --folds 2``."""

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from sweeps.train_config import datamodule_from
from tests.conftest import run_module_subprocess, run_train_subprocess, start_sweep
from tests.task_data import USER_MODULE_FOR_TASK, USER_MODULES, write_task_data
from tests.test_reliability import assert_same_weights, hook

# The template's module (the default the data's task chooses; task none has none) and a
# module written in the test's folder, per task.
CASES = [("regression", "template"), ("multilabel", "template"), ("segmentation", "template"),
         ("regression", "user"), ("multilabel", "user"), ("segmentation", "user"),
         ("none", "user")]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> dict[str, Path]:
    """One folder per task: its data, the user's modules (my_tasks.py) and data.yaml."""
    folders = {}
    for task in ("regression", "multilabel", "segmentation", "none"):
        folder = tmp_path_factory.mktemp(task)
        (folder / "data.yaml").write_text(write_task_data(folder / "data", task, digits_root))
        (folder / "my_tasks.py").write_text(USER_MODULES)
        folders[task] = folder
    return folders


def args_for(task: str, module: str, logs: Path, *extra: str) -> list[str]:
    args = ["--config", "data.yaml", f"--trainer.logger.init_args.save_dir={logs}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    if module == "user":
        name, monitor, mode = USER_MODULE_FOR_TASK[task]
        args += ["--model", f"my_tasks.{name}", f"--checkpoint.monitor={monitor}",
                 f"--checkpoint.mode={mode}"]
    return [*args, *extra]


def run(project: Path, args: list[str], timeout: float = 300) -> tuple[int, str]:
    result = run_train_subprocess(args, cwd=project, extra_path=project, timeout=timeout)
    return result.returncode, result.stdout + result.stderr


def run_side_by_side(project: Path, runs: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
    """Independent runs at the same time (one per core)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run, project, args) for name, args in runs.items()}
        return {name: future.result() for name, future in futures.items()}


def predict_input(task: str, project: Path) -> Path:
    """What to predict: the table's rows without the target, or the image table."""
    if task == "regression":
        table = pd.read_csv(project / "data" / "diabetes.csv").drop(columns="target").iloc[:50]
        table.to_csv(project / "new_rows.csv", index=False)
        return project / "new_rows.csv"
    return project / "data" / "images.csv"


@pytest.mark.parametrize(("task", "module"), CASES)
def test_each_task_fits_tests_predicts_and_exports(projects: dict[str, Path], task: str,
                                                   module: str) -> None:
    project = projects[task]
    logs = project / f"full_{module}"
    code, output = run(project, args_for(task, module, logs, "--max_epochs=3"))
    assert code == 0, output[-4000:]
    (run_dir,) = logs.glob("*/version_*")
    summary = json.loads((run_dir / "summary.json").read_text())
    if module == "template":  # its test_step ran on the test split, with the task's metrics
        metric = {"regression": "test/mae", "multilabel": "test/map",
                  "segmentation": "test/miou"}[task]
        assert metric in summary["metrics"], summary["metrics"]
    else:
        assert "has no test_step." in output
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    code, output = run(project, ["predict", *args_for(task, module, logs), f"--ckpt_path={ckpt}",
                                 f"--data.init_args.predict_path={predict_input(task, project)}"])
    assert code == 0, output[-4000:]
    table = pd.read_csv(run_dir / "predictions.csv")
    if task == "regression":  # one column, in the table's units (disease progression 25-346)
        assert list(table.columns) == ["row", "target"] and len(table) == 50
        truth = pd.read_csv(project / "data" / "diabetes.csv")["target"]
        assert abs(table["target"].mean() - truth.mean()) < 0.5 * truth.std()
        assert table["target"].std() > 0.1 * truth.std()
    elif task == "multilabel":  # a probability per label and the labels over 0.5
        assert list(table.columns) == ["path", "labels", "prob_even", "prob_big"]
        probabilities = table[["prob_even", "prob_big"]].to_numpy()
        assert ((probabilities >= 0) & (probabilities <= 1)).all()
        expected = [";".join(n for n, p in zip(("even", "big"), row, strict=True) if p >= 0.5)
                    for row in probabilities]
        assert table["labels"].fillna("").tolist() == expected
    elif task == "segmentation":  # one PNG mask per image, its pixels the class indices
        assert list(table.columns) == ["path", "mask"]
        for name in table["mask"].iloc[:5]:
            mask = np.array(Image.open(run_dir / name))
            assert mask.shape == (8, 8) and set(np.unique(mask)) <= {0, 1, 2}
    else:  # the autoencoder's reconstructions: one .npy per image
        assert list(table.columns) == ["path", "output_file"]
        assert np.load(run_dir / table["output_file"].iloc[0]).shape == (1, 8, 8)
    if task != "regression":  # every image of the table, once
        assert len(table) == len(pd.read_csv(project / "data" / "images.csv"))

    # The user's own module's package is trusted by saying so (`--trust`), like a config that
    # names it; the template's modules are trusted already.
    trust = ["--trust=my_tasks"] if "my_tasks" in str(torch.load(
        ckpt, weights_only=True)["hyper_parameters"].get("_class_path")) else []
    exported = run_module_subprocess("models.export", [f"--ckpt_path={ckpt}", *trust],
                                     cwd=project, extra_path=project)
    assert exported.returncode == 0, exported.stderr[-3000:]
    meta = json.loads(ckpt.with_suffix(".onnx.json").read_text())
    assert meta["task"] == task and meta["parity"]["max_abs_diff"] <= 1e-4
    shapes = {"regression": ([10], []), "multilabel": ([1, 8, 8], [2]),
              "segmentation": ([1, 8, 8], [3, 8, 8]), "none": ([1, 8, 8], [1, 8, 8])}
    assert (meta["input_shape"], meta["output_shape"]) == shapes[task]
    assert meta["read_mode"] == (None if task == "regression" else "GRAY")
    assert meta["output_names"] == {"regression": ["target"], "multilabel": ["even", "big"],
                                    "segmentation": ["background", "small", "big"],
                                    "none": None}[task]
    assert ("class_names" in meta) == (task in ("multilabel", "segmentation"))


@pytest.mark.ddp
@pytest.mark.parametrize(("task", "module"), CASES)
def test_each_task_trains_on_two_processes(projects: dict[str, Path], task: str,
                                          module: str) -> None:
    project = projects[task]
    logs = project / f"ddp_{module}"
    code, output = run(project, args_for(task, module, logs, "--devices=2", "--max_epochs=1",
                                         "--trainer.accelerator=cpu"), timeout=400)
    assert code == 0, output[-4000:]
    (run_dir,) = logs.glob("*/version_*")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(("task", "module"), CASES)
def test_each_task_resumes_inside_an_epoch_exactly(projects: dict[str, Path], task: str,
                                                  module: str) -> None:
    """Killed (kill -9) two batches into epoch 2 and resumed from the step-8 last.ckpt, a run
    ends with the weights of one never interrupted, bit for bit."""
    project = projects[task]
    common = ["fit", *args_for(task, module, project / "unused"), "--max_epochs=2",
              "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=2",
              "--checkpoint.every_n_train_steps=4"]
    straight, killed = project / f"straight_{module}", project / f"killed_{module}"
    results = run_side_by_side(project, {
        "straight": [*common, f"--trainer.logger.init_args.save_dir={straight}"],
        "killed": [*common, f"--trainer.logger.init_args.save_dir={killed}",
                   hook("SigkillAtStep", step=10)]})
    assert results["straight"][0] == 0, results["straight"][1][-3000:]
    assert results["killed"][0] == -signal.SIGKILL, results["killed"][1][-3000:]
    (last,) = killed.glob("*/version_*/checkpoints/last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 8

    code, output = run(project, [*common, f"--trainer.logger.init_args.save_dir={killed}",
                                 f"--ckpt_path={last}"])
    assert code == 0, output[-4000:]
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    (straight_last,) = straight.glob("*/version_*/checkpoints/last.ckpt")
    expected = torch.load(straight_last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == expected["global_step"] == 12
    assert_same_weights(resumed["state_dict"], expected["state_dict"])


@pytest.mark.parametrize(("task", "module"), CASES)
def test_each_task_cross_validates_in_two_disjoint_folds(projects: dict[str, Path], task: str,
                                                        module: str) -> None:
    """``sweep.py --folds 2``: two runs whose validation rows are disjoint (stratified by the
    task's rule) and whose test rows are the same; the printed mean is of the two folds."""
    project = projects[task]
    folder = project / f"cv_{module}"
    sweep = start_sweep([*args_for(task, module, folder), "--max_epochs=1", "--folds=2",
                         f"--dir={folder}"], cwd=project, extra_path=project)
    printed, _ = sweep.communicate(timeout=400)
    assert sweep.returncode == 0, printed[-4000:]
    assert "mean of 2 folds" in printed
    val, test = [], []
    for k in (0, 1):
        (config_file,) = folder.glob(f"*/trial_0000/fold_{k}/config.yaml")
        datamodule = datamodule_from(yaml.safe_load(config_file.read_text())["data"])
        datamodule.setup("fit")
        val.append(set(datamodule.split_tables["val"].index))
        test.append(set(datamodule.split_tables["test"].index))
    assert val[0] and val[1] and not val[0] & val[1]
    assert abs(len(val[0]) - len(val[1])) <= 1
    assert test[0] == test[1] and not test[0] & (val[0] | val[1])
