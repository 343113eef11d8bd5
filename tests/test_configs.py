"""Every config in configs/ trains end to end, as a user would run it, and passes the fast
checks of ``train.py check``; the debug presets run."""

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, base_args, log_lines, run_check, run_train_subprocess

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# Every run config, in any folder a user adds (search/ holds sweep spaces, not run configs).
RUN_CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "search" not in p.parts)
FAST_CHECKS = "builds,one_batch,gradients,eval_mode"
DEBUG_PRESETS = {  # preset: what its output shows (a regular expression)
    "fast": r"epochs / steps\s+│ 1 / 2 ",
    "overfit": r"epochs / steps\s+│ 100 / 100 ",
    "profile": r"Profiler Report",
    "anomaly": r"epochs / steps\s+│ 1 / \d+ ",
    "limit": r"epochs / steps\s+│ 2 / 40 ",  # 20 batches an epoch
}


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


def config_id(config: Path) -> str:
    return str(config.relative_to(REPO / "configs").with_suffix(""))


@pytest.mark.parametrize("config", [
    pytest.param(c, marks=[] if c.name == "digits.yaml" else [pytest.mark.slow])
    for c in RUN_CONFIGS], ids=[config_id(c) for c in RUN_CONFIGS])
def test_config_passes_the_fast_checks(
    config: Path, tmp_path: Path, digits_root: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = yaml.safe_load(config.read_text()) or {}
    write_weights_file_it_names(settings, tmp_path)
    args = [f"--config={config}"]
    if settings.get("data", {}).get("class_path") in (None, "datamodules.digits.DigitsDataModule"):
        args.append(f"--data.init_args.root={digits_root}")
    code, rows = run_check([*args, f"--checks={FAST_CHECKS}"], capsys)
    if config.name == "lr_find.yaml":  # the range test stops fit by design: said so
        assert rows["gradients"] == ("FAIL", "fit stopped before the first optimizer step (a "
                                             "callback that stops fit, e.g. an LR range test?)")
        assert rows["builds"][0] == rows["eval_mode"][0] == "pass"
        return
    assert code == 0, rows
    assert [status for status, _ in rows.values()] == ["pass"] * 4, rows
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("preset", [
    pytest.param(p, marks=[] if p == "fast" else [pytest.mark.slow]) for p in DEBUG_PRESETS])
def test_debug_preset_runs_on_top_of_the_default_config(
    preset: str, tmp_path: Path, digits_root: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import train

    monkeypatch.chdir(tmp_path)
    with log_lines() as lines:
        train.main([f"--config={REPO / 'configs' / 'debug' / f'{preset}.yaml'}",
                    *base_args(digits_root, tmp_path / "logs")])
    captured = capsys.readouterr()
    assert re.search(DEBUG_PRESETS[preset], "\n".join([captured.out, captured.err, *lines]))
