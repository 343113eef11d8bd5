"""Every option deletes cleanly: its files and its config lines go, and every other command still
works. The manifest below is the list of options; the slow test deletes each one in a copy of
the project and runs ``train.py --fast_dev_run 2`` and ``--print_config``."""

import ast
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import REPO

# option -> (files and folders to delete, (config file, line) pairs to delete with them)
OPTIONS: dict[str, tuple[list[str], list[tuple[str, str]]]] = {
    "tensorboard pictures": (["callbacks/tensorboard_images.py", "datamodules/show_batch.py",
                              "configs/tensorboard_images.yaml"], []),
    "slurm requeue": (["callbacks/slurm_requeue.py", "configs/slurm"], []),
    "sweeps and cross-validation": (["sweep.py", "sweeps", "callbacks/optuna_pruning.py",
                                     "configs/search"], []),
    "export": (["models/export.py", "callbacks/preprocessing_metadata.py"],
               [("configs/default.yaml", "preprocessing_metadata.PreprocessingMetadata")]),
    "ema": (["callbacks/ema.py", "configs/ema.yaml"], []),
    "fine-tuning": (["callbacks/finetuning.py", "configs/transfer.yaml"], []),
    "lr finder": (["callbacks/lr_finder.py", "configs/lr_find.yaml"], []),
    "initial weights": (["callbacks/initial_weights.py"], []),
    "batch augmentations": (["datamodules/batch_transforms.py"], []),
    "early stopping": (["configs/callbacks.yaml"], []),
    "benchmarks": (["benchmarks"], []),
    "contract checks": (["check.py"], [("train.py", 'argv[0] == "check"'),
                                       ("train.py", "from check import"),
                                       ("train.py", "check_main(argv")]),
    "debug presets": (["configs/debug"], []),
}
# What is left of the project when an option is deleted, and what a default run imports.
CORE_PACKAGES = ("datamodules", "models", "callbacks", "configs")
CORE_FILES = ("train.py", "errors.py", "workarounds.py")


def option_modules(files: list[str]) -> set[str]:
    """The dotted module names of an option's Python files."""
    modules = set()
    for name in files:
        path = REPO / name
        for file in ([path] if path.is_file() else path.rglob("*.py")):
            if file.suffix == ".py":
                modules.add(".".join(file.relative_to(REPO).with_suffix("").parts))
    return modules


def imported_by(file: Path, deleted_lines: Sequence[str] = ()) -> set[str]:
    """What ``file`` imports once the lines containing any of ``deleted_lines`` are gone."""
    rows = [row for row in file.read_text().splitlines(keepends=True)
            if not any(line in row for line in deleted_lines)]
    tree = ast.parse("".join(rows))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("option", list(OPTIONS))
def test_no_other_file_imports_an_option(option: str) -> None:
    files, lines = OPTIONS[option]
    mine = option_modules(files)
    deleted = {(REPO / name).resolve() for name in files}
    others = [REPO / name for name in CORE_FILES] + [
        file for package in CORE_PACKAGES for file in (REPO / package).rglob("*.py")]
    users = [str(file.relative_to(REPO)) for file in others
             if file.resolve() not in deleted
             and not any(parent in deleted for parent in file.resolve().parents)
             and imported_by(file, [line for config, line in lines
                                    if REPO / config == file]) & mine]
    assert not users, f"{option}: imported by {users}"


# `pip install -e .` maps the packages to this checkout, also for a module the copy lacks: the
# copy runs with that finder taken out, so a deleted file cannot be found here.
RUN_WITHOUT_THE_EDITABLE_INSTALL = """
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, ".")
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def copy_without(option: str, destination: Path) -> Path:
    project = destination / "project"
    shutil.copytree(REPO, project, ignore=shutil.ignore_patterns(
        ".venv", ".git", "logs", "data", "__pycache__", "tests", "*.egg-info"))
    files, lines = OPTIONS[option]
    for name in files:
        path = project / name
        assert path.exists(), f"the manifest names {name}, which does not exist"
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for config, line in lines:
        path = project / config
        kept = [row for row in path.read_text().splitlines(keepends=True) if line not in row]
        assert len(kept) < len(path.read_text().splitlines()), (config, line)
        path.write_text("".join(kept))
    return project


@pytest.mark.slow
@pytest.mark.parametrize("option", list(OPTIONS))
def test_deleting_an_option_leaves_train_py_working(option: str, tmp_path: Path) -> None:
    project = copy_without(option, tmp_path)
    for args in (["--fast_dev_run", "2", "--trainer.enable_progress_bar=false"],
                 ["--print_config"]):
        done = subprocess.run([sys.executable, "-c", RUN_WITHOUT_THE_EDITABLE_INSTALL, *args],
                              cwd=project, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (option, args, done.stderr[-3000:])


# Modules a default run must not import: each option's, the other tasks', and those of paths
# it does not take (a checkpoint given, an error, data chosen on the command line, folds).
NOT_IN_A_DEFAULT_RUN = {"datamodules.tasks.multilabel", "datamodules.tasks.regression",
                        "datamodules.tasks.segmentation", "datamodules.folds",
                        "models.checkpoints", "configs.messages", "configs.task_defaults",
                        "datamodules.optional_samplers", "datamodules.normalise_mismatch",
                        "datamodules.tasks.continuous_labels", "datamodules.bad_rows",
                        "datamodules.deterministic_transforms", "datamodules.mixed_sizes",
                        "models.task_advice", "models.schedule_length",
                        "callbacks.step_checkpoints", "callbacks.exception_checkpoint",
                        "callbacks.first_loader_batch"}
LIST_PROJECT_MODULES = RUN_WITHOUT_THE_EDITABLE_INSTALL.replace(
    'runpy.run_path("train.py", run_name="__main__")',
    'runpy.run_path("train.py", run_name="__main__")\n'
    'print("MODULES", " ".join(sorted(sys.modules)))')


@pytest.mark.slow
def test_a_default_run_imports_no_option_and_no_other_task(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(REPO, project, ignore=shutil.ignore_patterns(
        ".venv", ".git", "logs", "data", "__pycache__", "tests", "*.egg-info"))
    done = subprocess.run([sys.executable, "-c", LIST_PROJECT_MODULES, "--fast_dev_run", "2",
                           "--trainer.enable_progress_bar=false"],
                          cwd=project, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [row for row in done.stdout.splitlines() if row.startswith("MODULES ")]
    imported = set(line.split()[1:])
    assert "datamodules.tasks.multiclass" in imported  # the default run's own task
    listed = (REPO / "configs" / "default.yaml").read_text()  # options on by default
    options = {module for files, _ in OPTIONS.values() for module in option_modules(files)
               if f"{module}." not in listed}
    assert not imported & (options | NOT_IN_A_DEFAULT_RUN)
