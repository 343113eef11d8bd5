"""What a user can cause or fix ends in one line and a non-zero exit, not a traceback: a YAML
syntax error names the file, Lightning's refusal of an option's value is one line, and the
machine refusing a write (a full disk, a folder that cannot be written) names the file."""

import errno
import io
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.io import write_png

import train
from tests.conftest import base_args

TINY = ["--max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def exits(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    return int(exit_info.value.code)


def test_a_yaml_syntax_error_names_the_config_file_line_and_column(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = run_dir / "my_run.yaml"
    config.write_text("trainer:\n  max_epochs: [1\n  devices: 2\n")
    assert exits(["--config", str(config)]) == 2
    line = one_line(capsys)
    assert line.startswith(f"train.py: error: {config}: not valid YAML: ")
    assert line.endswith("at line 3, column 10") and "<unicode string>" not in line
    assert not (run_dir / "logs").exists()


@pytest.mark.parametrize(
    ("option", "named"),
    [("--max_epochs=-5", "`max_epochs` must be a non-negative integer or -1. You passed in -5."),
     ("--devices=0", "`Trainer(devices='0')` value is not a valid input")],
)
@pytest.mark.slow
def test_a_trainer_value_lightning_refuses_is_one_line(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str], option: str,
    named: str,
) -> None:
    assert exits([*base_args(digits_root, run_dir / "logs"), option]) == 2
    assert one_line(capsys).startswith(f"train.py: error: {named}")
    assert not (run_dir / "logs").exists()


@pytest.mark.slow
def test_a_log_folder_that_cannot_be_written_is_one_line_naming_it(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # /sys refuses new folders, even to root (EPERM), like a folder the user cannot write.
    args = base_args(digits_root, Path("/sys/template-logs"))
    assert exits([*args, *TINY]) == 1
    line = one_line(capsys)
    assert line.startswith("train.py: error: cannot write /sys/template-logs"), line


class FullDisk(io.RawIOBase):
    """A file on a disk with ``room`` bytes left: then every write fails with ENOSPC."""

    def __init__(self, path: str, room: int) -> None:
        self.path, self.room = path, room

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        self.room -= len(data)
        return len(data)


@pytest.mark.slow
def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_no_partial_file(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import callbacks.atomic_checkpoint_io as atomic

    # Checkpoint files go through AtomicCheckpointIO's open(); 10 kB fit, the file does not.
    monkeypatch.setattr(atomic, "open", lambda path, mode: io.BufferedWriter(
        FullDisk(str(path), room=10_000)), raising=False)
    assert exits([*base_args(digits_root, run_dir / "logs"), *TINY]) == 1
    line = one_line(capsys)
    assert line.startswith("train.py: error: cannot write ")
    assert line.endswith(".ckpt: No space left on device"), line
    checkpoints = run_dir / "logs" / "digits" / "version_0" / "checkpoints"
    assert not list(checkpoints.glob("*")), "a partial or claimed-resumable file was left"


@pytest.mark.slow
def test_a_last_training_batch_of_one_under_batchnorm_is_left_out_saying_so(
    run_dir: Path,
) -> None:
    from datamodules.breast_cancer import BreastCancerDataModule
    from tests.conftest import REPO, log_lines

    data = BreastCancerDataModule()
    data.setup("fit")
    rows = len(data.datasets["train"])
    # A batch size that leaves one training row over: the MLP's BatchNorm1d cannot train on it.
    with log_lines() as said:
        cli = train.main(["fit", "--config", str(REPO / "configs/breast_cancer.yaml"),
                          f"--trainer.logger.init_args.save_dir={run_dir / 'logs'}",
                          "--trainer.enable_progress_bar=false", "--max_epochs=1",
                          f"--data.init_args.batch_size={rows - 1}"])
    assert cli.trainer.global_step == 1  # the full batch trained, the batch of one left out
    assert (f"BreastCancerDataModule: the last training batch would hold 1 of {rows} samples, "
            "which ImageClassifier's BatchNorm cannot train on") in "\n".join(said)


@pytest.mark.slow
def test_an_image_of_another_size_stops_the_run_before_it_starts(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One 1x1 file among the 8x8 digits would fail mid-epoch in the collate, after an
    exception checkpoint that advises a resume; it is named before the trainer starts."""
    data = run_dir / "digits"
    shutil.copytree(digits_root, data)
    odd = sorted((data / "images").rglob("*.png"))[5]
    write_png(torch.zeros((1, 1, 1), dtype=torch.uint8), str(odd))
    assert exits([*base_args(data, run_dir / "logs"), *TINY]) == 2
    line = one_line(capsys)
    assert line.startswith("train.py: error: ") and f"{odd} (1x1 L) becomes [1, 1, 1]" in line
    assert not (run_dir / "logs").exists()


@pytest.mark.slow
def test_a_last_batch_of_one_under_batchnorm2d_on_1x1_maps_is_left_out(
    run_dir: Path, digits_root: Path,
) -> None:
    # ResNet-18 on small images: its last block's BatchNorm2d sees 1x1 maps, one value per
    # channel for a batch of one, as BatchNorm1d does.
    from datamodules.digits import DigitsDataModule
    from tests.conftest import REPO

    data = DigitsDataModule(root=digits_root)
    data.setup("fit")
    rows = len(data.datasets["train"])
    cli = train.main(["fit", "--config", str(REPO / "configs/resnet18.yaml"),
                      *base_args(digits_root, run_dir / "logs"), "--max_epochs=1",
                      "--trainer.limit_val_batches=1", f"--data.init_args.batch_size={rows - 1}"])
    assert cli.trainer.global_step == 1  # the full batch trained, the batch of one left out


def test_weights_that_do_not_fit_and_a_log_path_through_a_file_are_one_line() -> None:
    from configs.messages import one_line_for

    with pytest.raises(RuntimeError) as mismatch:  # a checkpoint of a model for 4 classes
        torch.nn.Linear(3, 2).load_state_dict(torch.nn.Linear(3, 4).state_dict())
    line, status = one_line_for(mismatch.value)
    assert status == 2 and line.startswith(
        "the checkpoint's weights do not fit Linear as configured (size mismatch for weight")
    assert "--config <its run>/config.yaml" in line and "\n" not in line

    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    no_logger = MisconfigurationException(
        "Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger.")
    assert one_line_for(no_logger)[0].endswith(
        "no logger: without a logger, drop it from trainer.callbacks (configs/default.yaml)")

    through_a_file = NotADirectoryError(errno.ENOTDIR, "Not a directory", "logs/afile/run")
    assert one_line_for(through_a_file) == ("cannot write logs/afile/run: Not a directory", 1)
