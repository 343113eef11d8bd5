"""What a run shows: TensorBoard scalars, pictures and hparams read back from the event files,
checkpoints written on an exception or SIGTERM and resumed, EMA weights, plain progress lines
under CI, and the run summary."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image
from rich.console import Console
from torch.utils.data import DataLoader, TensorDataset

import train
from callbacks.run_summary import RunSummary
from tests.conftest import REPO, base_args, pythonpath_with, read_events

CONFIGS = REPO / "configs"
TINY = ["--max_epochs=1", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2"]


def only_run_dir(logs: Path) -> Path:
    (run,) = sorted((logs / "digits").glob("version_*"))
    return run


# -- TensorBoard: scalars, pictures, hparams; summary; checkpoint contents -------------------
@pytest.mark.slow
def test_tensorboard_has_scalars_pictures_and_hparams_and_summary_has_throughput(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    logs = run_dir / "logs"
    threads_before = set(threading.enumerate())
    # 22 steps: several logged steps (every 5); the pictures are an option (their config).
    pictures = REPO / "configs" / "tensorboard_images.yaml"
    train.main([*base_args(digits_root, logs), f"--config={pictures}", "--max_epochs=1",
                "--trainer.limit_train_batches=22", "--trainer.limit_val_batches=3",
                "--trainer.limit_test_batches=2", "--trainer.log_every_n_steps=5"])
    run = only_run_dir(logs)
    events = read_events(run)
    tags = events.Tags()

    for scalar in ("lr-AdamW/pg1", "grad_norm/total", "train/loss_step", "val/loss", "val/acc",
                   "test/acc", "best/val/loss"):
        assert scalar in tags["scalars"], (scalar, tags["scalars"])
    assert len(events.Scalars("lr-AdamW/pg1")) >= 4  # per step (every log_every_n_steps)

    # One validation epoch: one picture of each kind, all bounded in size.
    for tag in ("images/train_batch", "images/val_confusion_matrix", "images/val_worst"):
        assert tag in tags["images"], (tag, tags["images"])
        (image,) = events.Images(tag)
        assert image.width <= 1200 and image.height <= 1200
        with Image.open(io.BytesIO(image.encoded_image_string)) as png:  # a readable PNG
            assert png.format == "PNG" and png.size == (image.width, image.height)
    assert events.Images("images/train_batch")[0].step == 0
    assert events.Images("images/val_confusion_matrix")[0].step == 22

    # HParams tab: hyperparameters and the final metrics, recorded once.
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metric_tags = {info.name.tag for info in experiment.experiment.metric_infos}
    assert {"val/acc", "val/loss", "test/acc", "best/val/loss"} <= metric_tags
    session = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["label_smoothing"].number_value == 0.1
    assert "hp_metric" not in tags["scalars"]  # no -1 placeholder
    # Every event file closed: no TensorBoard writer thread outlives the run.
    assert not [t for t in set(threading.enumerate()) - threads_before
                if type(t).__name__ == "_AsyncWriterThread"]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["samples_per_second"] > 0
    assert summary["train_samples"] == 22 * 16
    assert summary["best_epoch"] == 0
    assert set(summary["best_epoch_metrics"]) >= {"val/loss", "val/acc"}
    out = capsys.readouterr().out
    for text in ("best val (epoch 0)", "test", "samples/s", "best checkpoint", "log directory",
                 f"tensorboard --logdir {run.parent}"):
        assert text in out, text

    # The checkpoint carries what prediction needs: the class list, in the model's
    # hyperparameters and the datamodule's state.
    ckpt = torch.load(summary["best_checkpoint"], weights_only=False)
    names = [str(i) for i in range(10)]
    assert ckpt["hyper_parameters"]["class_names"] == names
    assert ckpt["DigitsDataModule"]["class_names"] == names


def test_confusion_matrix_picture_has_a_cell_per_class_pair() -> None:
    from callbacks.tensorboard_images import confusion_matrix_image

    matrix = torch.tensor([[5, 1, 0], [0, 3, 2], [0, 0, 4]])
    image = confusion_matrix_image(matrix, ["cat", "dog", "bird"], "epoch 0")
    assert image.mode == "RGB" and 300 <= image.width <= 800
    # The darkest cells are the ones with the largest share of their row.
    big = confusion_matrix_image(torch.eye(50, dtype=torch.long), [f"c{i}" for i in range(50)])
    assert big.width <= 1200 and big.height <= 1200


# -- last.ckpt --------------------------------------------------------------------------------
@pytest.mark.parametrize("improves", [True, False])
@pytest.mark.slow
def test_last_checkpoint_is_the_latest_epoch_whether_or_not_the_monitor_improved(
    run_dir: Path, digits_root: Path, improves: bool
) -> None:
    logs = run_dir / "logs"
    # monitor=step: "max" improves at every epoch, "min" never after the first (Lightning 2.6
    # alone then leaves last.ckpt at the first epoch: tests/test_workarounds.py).
    train.main(["fit", *base_args(digits_root, logs), "--max_epochs=3",
                "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
                "--checkpoint.monitor=step", f"--checkpoint.mode={'max' if improves else 'min'}",
                "--checkpoint.filename=best-{step}"])
    folder = only_run_dir(logs) / "checkpoints"
    (best,) = folder.glob("best-*.ckpt")
    last = folder / "last.ckpt"
    assert best.name == ("best-step=9.ckpt" if improves else "best-step=3.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == sorted([best.name, "last.ckpt"])
    best.unlink()  # e.g. the next improvement replaces it: last.ckpt is unaffected
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 9 and state["epoch"] == 2
    (checkpoint_state,) = (v for k, v in state["callbacks"].items() if k.startswith("Checkpoint"))
    assert checkpoint_state["last_model_path"] == str(last)  # resuming replaces this file


# -- checkpoints on an exception, resumed -----------------------------------------------------
class RaiseMidEpoch(Callback):
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == 2:
            raise RuntimeError("simulated failure")


@pytest.mark.slow
def test_exception_mid_epoch_saves_last_checkpoint_and_resume_continues(
    run_dir: Path, digits_root: Path
) -> None:
    logs = run_dir / "logs"
    args = [*base_args(digits_root, logs), *TINY]
    with pytest.raises(RuntimeError, match="simulated failure"):
        train.main([*args, "--trainer.callbacks+=tests.test_callbacks.RaiseMidEpoch"])
    run = only_run_dir(logs)
    checkpoints = run / "checkpoints"
    # Only last.ckpt: no validation has run, so there is no best checkpoint to name.
    assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]
    saved = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 2

    cli = train.main([*args, "--ckpt_path=last", "--trainer.enable_progress_bar=true"])

    assert cli.trainer.global_step == 4  # the two remaining batches of epoch 0, not four more
    assert only_run_dir(logs) == run
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 4


# -- SIGTERM (pre-emption), in a real train.py process -----------------------------------------
class SigtermMidEpoch(Callback):
    """The job's own process receives SIGTERM at a chosen step, as a scheduler would send it."""

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)


def run_train(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": pythonpath_with(REPO), "PYTHONUNBUFFERED": "1",
                   **env}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_last_checkpoint_exits_143_and_resumes(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = run_dir / "logs"
    args = [*base_args(digits_root, logs), *TINY]
    result = run_train([*args, "--trainer.callbacks+=tests.test_callbacks.SigtermMidEpoch"],
                       cwd=run_dir)
    output = result.stdout + result.stderr
    assert result.returncode == 143, output[-3000:]
    assert "stopped by SIGTERM" in result.stderr
    run = only_run_dir(logs)
    # Lightning lets the batch in flight finish, then stops: step 3 is saved.
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 3

    capsys.readouterr()
    cli = train.main([*args, "--ckpt_path=last", "--trainer.enable_progress_bar=true"])

    assert cli.trainer.global_step == 4
    assert only_run_dir(logs) == run
    # The resumed epoch's progress line: one line, timed from the resume (Lightning does not
    # call on_train_epoch_start when it re-enters an epoch mid-way).
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 1, lines
    seconds = float(re.search(r"batches\) ([0-9.]+) s", lines[0]).group(1))
    assert seconds < 60, lines[0]


# -- EMA --------------------------------------------------------------------------------------
class RecordWeights(Callback):
    """Keeps its own EMA of the raw weights (decay 0.99, first update copies) and records the
    weights validation runs with."""

    def __init__(self) -> None:
        self.ema: dict[str, torch.Tensor] = {}
        self.raw: dict[str, torch.Tensor] = {}
        self.validated: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        for name, p in pl_module.named_parameters():
            value = p.detach().clone()
            self.raw[name] = value
            self.ema[name] = value if name not in self.ema else 0.99 * self.ema[name] + 0.01 * value

    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule,
                                  batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking and batch_idx == 0:
            self.validated = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def test_ema_validation_and_best_checkpoint_use_the_running_average(
    run_dir: Path, digits_root: Path
) -> None:
    from callbacks.ema import EMA

    logs = run_dir / "logs"
    cli = train.main(["fit", *base_args(digits_root, logs), *TINY,
                      f"--config={CONFIGS / 'ema.yaml'}", "--trainer.num_sanity_val_steps=0",
                      "--trainer.callbacks+=tests.test_callbacks.RecordWeights"])
    assert any(isinstance(c, EMA) for c in cli.trainer.callbacks)
    (record,) = [c for c in cli.trainer.callbacks if isinstance(c, RecordWeights)]
    assert record.validated.keys() == record.ema.keys() and record.ema
    for name, value in record.validated.items():
        torch.testing.assert_close(value, record.ema[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(record.validated[n], record.raw[n]) for n in record.raw)

    best = cli.trainer.checkpoint_callback.best_model_path
    state = torch.load(best, weights_only=False)
    for name, value in record.ema.items():
        torch.testing.assert_close(state["state_dict"][name], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state["current_model_state"][name], record.raw[name])


# -- progress output ----------------------------------------------------------------------------
def test_progress_bar_is_rich_on_a_terminal_and_plain_lines_under_ci(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.pytorch.callbacks import RichProgressBar

    from callbacks.progress import LineProgressBar, default_progress_bar

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.delenv("CI", raising=False)
    assert isinstance(default_progress_bar(), RichProgressBar)
    monkeypatch.setenv("CI", "true")
    assert isinstance(default_progress_bar(), LineProgressBar)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    monkeypatch.delenv("CI")
    assert isinstance(default_progress_bar(), LineProgressBar)


@pytest.mark.slow
def test_output_under_ci_has_no_control_characters(run_dir: Path, digits_root: Path) -> None:
    args = [a for a in base_args(digits_root, run_dir / "logs") if "progress_bar" not in a]
    result = run_train([*args, *TINY], cwd=run_dir, CI="true")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "epoch 1/1 step 4 (4/4 batches)" in result.stdout
    assert "Run summary" in result.stdout
    assert "\x1b" not in output and "\r" not in output


class OwnNames(LightningModule):
    """A module naming its stages its own way: ``valid_loss``, ``mse_val``, ``loss/training``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss/training", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("valid_loss", loss)
        self.log("mse_val", loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_summary_shows_metrics_named_with_the_stage_before_or_after(tmp_path: Path) -> None:
    points = TensorDataset(torch.randn(32, 3), torch.randn(32, 1))
    summary = RunSummary()
    trainer = Trainer(max_epochs=2, callbacks=[summary], logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(OwnNames(), DataLoader(points, batch_size=8), DataLoader(points, batch_size=8))
    out = io.StringIO()
    summary.report(trainer, Console(file=out, width=120))
    rows = {line.split("│")[1].strip() for line in out.getvalue().splitlines()
            if line.startswith("│") and line.count("│") > 3}
    assert {"loss", "mse"} <= rows, out.getvalue()
