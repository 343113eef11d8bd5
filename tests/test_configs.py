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
    settings = yaml.safe_load(config.read_text()) or {}
    write_weights_file_it_names(settings, tmp_path)
    data_class = settings.get("data", {}).get("class_path")
    if data_class not in (None, "datamodules.digits.DigitsDataModule"):
        args = [a for a in args if not a.startswith("--data.")]  # brings its own data
    result = run_train_subprocess(
        ["--config", str(config), *args, "--trainer.fast_dev_run=2"], cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "test/acc" in output
    assert "Run summary" in output
    assert not list(tmp_path.rglob("*.ckpt")), "fast_dev_run wrote a checkpoint"


def write_weights_file_it_names(settings: dict, folder: Path) -> None:
    """Transfer-learning configs name a local weights file that users save once (see the
    config); here it is a freshly initialised torchvision model's state_dict, same format."""
    backbone = settings.get("model", {}).get("init_args", {}).get("backbone", {})
    init_args = backbone.get("init_args", {})
    if init_args.get("weights_path"):
        import torch
        import torchvision

        path = folder / init_args["weights_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.get_model(init_args["name"]).state_dict(), path)
