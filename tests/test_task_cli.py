"""train.py and the data's task: the model a config gets when it names data but no model, and
data that does not fit the task refused in one line before anything is written."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import run_train_forked


def write_table(folder: Path, target: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(len(target), 3)), columns=["a", "b", "c"])
    table["target"] = target
    path = folder / "table.csv"
    table.to_csv(path, index=False)
    return path


def config(folder: Path, text: str) -> str:
    path = folder / "run.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.slow
def test_data_without_a_model_gets_the_tasks_module_and_refusals_are_one_line(
        tmp_path: Path) -> None:
    cases = {}
    for name in ("regression_init_args", "none", "continuous_as_classes", "unknown_task"):
        (tmp_path / name).mkdir()
    folder = tmp_path / "regression_init_args"
    table = write_table(folder, np.linspace(25.0, 346.0, 60))
    cases["regression_init_args"] = (["--print_config", "--config", config(folder, (
        f"data:\n  class_path: datamodules.dataframe.DataFrameDataModule\n  init_args:\n"
        f"    data: {table}\n    task: regression\n    label_column: target\n"
        "model:\n  init_args:\n    loss: huber\n"))], folder)
    folder = tmp_path / "none"
    table = write_table(folder, np.zeros(60))
    cases["none"] = (["--config", config(folder, (
        f"data:\n  class_path: datamodules.dataframe.DataFrameDataModule\n  init_args:\n"
        f"    data: {table}\n    task: none\n"))], folder)
    folder = tmp_path / "continuous_as_classes"
    table = write_table(folder, np.linspace(25.0, 346.0, 60))
    cases["continuous_as_classes"] = (["--data=datamodules.dataframe.DataFrameDataModule",
                                       f"--data.init_args.data={table}",
                                       "--data.init_args.label_column=target"], folder)
    folder = tmp_path / "unknown_task"
    table = write_table(folder, np.zeros(60))
    cases["unknown_task"] = (["--data=datamodules.dataframe.DataFrameDataModule",
                              f"--data.init_args.data={table}",
                              "--data.init_args.task=regresion"], folder)

    results = run_train_forked(cases)

    printed = results["regression_init_args"]
    assert printed.returncode == 0, printed.stderr[-3000:]
    model = yaml.safe_load(printed.stdout)["model"]
    assert model["class_path"] == "models.regressor.Regressor"
    assert model["init_args"]["loss"] == "huber"
    for name, expected in (("none", "task: none has no default model: set model.class_path"),
                           ("continuous_as_classes", "task: regression"),
                           ("unknown_task", "regresion")):
        result = results[name]
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (name, result.stderr[-3000:])
        lines = [line for line in lines if not line.startswith("Seed set to")]  # Lightning's
        assert len(lines) == 1 and lines[0].startswith("train.py: error:"), (name, lines)
        assert expected in lines[0], (name, lines)
        assert not (tmp_path / name / "logs").exists(), name
