"""Every config in configs/ trains end to end, as a user would run it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, base_args, run_train_subprocess

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_configs_folder_has_the_default_and_a_ddp_config() -> None:
    assert {"default.yaml", "ddp.yaml"} <= {c.name for c in CONFIGS}


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_trains_and_tests_with_tiny_limits(
    config: Path, tmp_path: Path, digits_root: Path
) -> None:
    args = base_args(digits_root, tmp_path / "logs")
    data_class = (yaml.safe_load(config.read_text()) or {}).get("data", {}).get("class_path")
    if data_class not in (None, "datamodules.digits.DigitsDataModule"):
        args = [a for a in args if not a.startswith("--data.")]  # brings its own data
    result = run_train_subprocess(
        ["--config", str(config), *args, "--trainer.fast_dev_run=2"], cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "test/acc" in output
    assert "Run summary" in output
