"""Shared fixtures: tiny data made on the fly, and ways to run train.py in or out of process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default data set written once per test session (PNG files + labels.csv)."""
    from datamodules.digits import write_digits

    root = tmp_path_factory.mktemp("data") / "digits"
    write_digits(root)
    return root


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean working directory, so nothing a run writes lands in the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def base_args(digits_root: Path, logs: Path) -> list[str]:
    """Options that point a run at the test's data and log folders."""
    return [
        f"--data.init_args.root={digits_root}",
        f"--trainer.logger.init_args.save_dir={logs}",
        f"--trainer.default_root_dir={logs}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def run_train_subprocess(
    args: list[str], cwd: Path, timeout: float = 300, extra_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python train.py ARGS`` as a user would, in its own process (needed for DDP, which
    re-executes the script per rank)."""
    env = dict(os.environ)
    pythonpath = [str(REPO)] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join([*pythonpath, env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
