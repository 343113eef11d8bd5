"""The default configuration, unchanged, reaches the accuracy the README promises."""

import json
from pathlib import Path

import pytest

from tests.conftest import base_args, run_train_subprocess

pytestmark = pytest.mark.slow


def test_default_run_reaches_99_percent_test_accuracy(tmp_path: Path, digits_root: Path) -> None:
    result = run_train_subprocess(["--seed=0", *base_args(digits_root, tmp_path / "logs")],
                                  cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    (summary_file,) = (tmp_path / "logs" / "digits").glob("version_*/summary.json")
    metrics = json.loads(summary_file.read_text())["metrics"]
    assert metrics["test/acc"] >= 0.99, metrics


@pytest.mark.ddp
def test_default_run_on_two_ddp_ranks_reaches_98_5_percent(
    tmp_path: Path, digits_root: Path
) -> None:
    result = run_train_subprocess(
        ["--devices=2", "--seed=0", *base_args(digits_root, tmp_path / "logs")], cwd=tmp_path
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    (summary_file,) = (tmp_path / "logs" / "digits").glob("version_*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["world_size"] == 2
    assert summary["metrics"]["test/acc"] >= 0.985, summary["metrics"]


def test_breast_cancer_mlp_reaches_97_percent(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "breast_cancer.yaml"
    result = run_train_subprocess(
        [f"--config={config}", "--seed=0", f"--trainer.logger.init_args.save_dir={tmp_path}",
         "--trainer.enable_progress_bar=false"], cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    (summary_file,) = tmp_path.glob("breast_cancer/version_*/summary.json")
    metrics = json.loads(summary_file.read_text())["metrics"]
    assert metrics["test/acc"] >= 0.97, metrics
