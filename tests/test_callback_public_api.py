"""The callbacks that reach into Lightning through its public API only, checked against what
Lightning itself does: the steps and step numbers of directly logged metrics, TensorBoard
pictures for a LightningModule written the way a user writes one, stopping the ranks a failing
rank launched, atomic checkpoint files and resuming after the backbone was unfrozen.

These tests may read Lightning's private members: that is how they notice when the public
reconstruction drifts from Lightning's own decision."""

import io
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.grad_norm import GradNormLogger
from tests.conftest import log_lines

QUIET = {"enable_progress_bar": False, "enable_model_summary": False,
         "enable_checkpointing": False}


# -- which steps, at which step numbers ---------------------------------------------------------
class RecordingLogger(Logger):
    """Every ``log_metrics`` call: (step, metric names)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, set[str]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, set(metrics)))

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def steps_of(self, name: str) -> list[int | None]:
        return [step for step, names in self.calls if name in names]


class LinearLogsEveryStep(LightningModule):
    """Logs its loss on every training step: Lightning decides which reach the logger."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize(
    ("accumulate", "batches", "stop_at", "written"),
    [
        # 21 batches an epoch: steps 0-20, then 21-22.
        (1, 21, None, [4, 9, 14, 19]),
        # An optimizer step every 2 batches, the last batch of an epoch steps alone: 11 steps
        # an epoch (0-10, 11-21, 22).
        (2, 21, None, [4, 9, 14, 19]),
        # Stopped during step 12: Lightning writes that step's metrics too.
        (1, 21, 12, [4, 9, 12]),
    ],
    ids=["every-batch", "accumulate-2", "should-stop"],
)
def test_grad_norm_is_logged_at_the_steps_lightning_writes(
    tmp_path: Path, accumulate: int, batches: int, stop_at: int | None, written: list[int],
) -> None:
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(4 * batches, 2)), batch_size=4)
    logger = RecordingLogger()
    trainer = Trainer(default_root_dir=tmp_path, max_steps=23, log_every_n_steps=5,
                      accumulate_grad_batches=accumulate, logger=logger,
                      callbacks=[StopAt(stop_at), GradNormLogger()], **QUIET)
    trainer.fit(LinearLogsEveryStep(), data)

    assert logger.steps_of("loss") == written
    assert logger.steps_of("grad_norm/total") == written


class StopAt(Callback):
    def __init__(self, step: int | None) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


# -- TensorBoard pictures for a module written the way a user writes one -----------------------
class UserNet(LightningModule):
    """Three classes of 8x8 grey images; its own metric names, no test_step, and a
    ``validation_step`` that returns ``returns`` ("none", "loss", "logits", "logits_dict").
    ``forward`` returns logits, or with ``forward_gives`` "raises" it refuses the validation
    batches' inputs (the pictures must not need it)."""

    def __init__(self, returns: str = "none", forward_gives: str = "logits") -> None:
        super().__init__()
        self.returns = returns
        self.forward_gives = forward_gives
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        self.forward_calls = 0

    def forward(self, x: torch.Tensor) -> Any:
        self.forward_calls += 1
        if self.forward_gives == "raises" and not self.training:
            raise TypeError("UserNet.forward() wants (images, metadata)")
        return self.net(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self._logits(x), y)
        self.log("my_train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        logits = self._logits(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("my_val_loss", loss)
        return {"none": None, "loss": loss, "logits": logits,
                "logits_dict": {"logits": logits, "loss": loss}}[self.returns]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit_user_net(tmp_path: Path, model: UserNet) -> tuple[Any, list[str]]:
    """Two epochs with TensorBoardImages; the event file and the lines it printed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from callbacks.tensorboard_images import TensorBoardImages

    torch.manual_seed(0)
    images, targets = torch.randn(48, 1, 8, 8), torch.arange(48) % 3
    data = DataLoader(TensorDataset(images, targets), batch_size=8)
    with log_lines("lightning.pytorch.utilities.rank_zero") as lines:
        trainer = Trainer(default_root_dir=tmp_path, max_epochs=2, limit_train_batches=3,
                          limit_val_batches=3, logger=TensorBoardLogger(tmp_path, name="run"),
                          callbacks=[TensorBoardImages(worst_k=4)], **QUIET)
        trainer.fit(model, data, data)
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    return events, [line for line in lines if line.startswith("TensorBoardImages")]


@pytest.mark.parametrize("returns", ["logits", "logits_dict"])
def test_validation_pictures_come_from_what_validation_step_returns(
    tmp_path: Path, returns: str
) -> None:
    model = UserNet(returns, forward_gives="raises")  # forward is never called for them
    events, lines = fit_user_net(tmp_path, model)

    assert lines == []
    assert model.forward_calls == 0
    tags = events.Tags()["images"]
    assert {"images/train_batch", "images/val_confusion_matrix", "images/val_worst"} <= set(tags)
    matrices = events.Images("images/val_confusion_matrix")
    assert [m.step for m in matrices] == [3, 6]  # one per validation epoch, at global_step
    for image in (*matrices, *events.Images("images/val_worst")):
        with Image.open(io.BytesIO(image.encoded_image_string)) as png:
            assert png.format == "PNG" and png.size == (image.width, image.height)
            assert png.mode == "RGB"


@pytest.mark.parametrize("returns", ["none", "loss"])
def test_a_validation_step_without_logits_costs_the_pictures_not_the_run(
    tmp_path: Path, returns: str
) -> None:
    model = UserNet(returns)
    events, lines = fit_user_net(tmp_path, model)

    assert model.trainer.current_epoch == 2 and model.trainer.global_step == 6
    assert model.forward_calls == 0  # no second forward pass of the pictures' own
    (line,) = lines  # once, though 6 validation batches ran
    assert line.startswith("TensorBoardImages: no confusion matrix or worst-mistakes grid")
    assert "validation_step must return (N, C) logits" in line and "UserNet" in line
    assert "\n" not in line
    tags = events.Tags()["images"]
    assert "images/train_batch" in tags
    assert "images/val_confusion_matrix" not in tags and "images/val_worst" not in tags


# -- a failing rank stops the ranks it launched ---------------------------------------------------
def test_failing_launcher_rank_names_itself_and_kills_the_ranks_it_started(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies.launchers.subprocess_script import (
        _SubprocessScriptLauncher,
    )

    from callbacks.rank_failure import ReportRankFailure

    launcher = _SubprocessScriptLauncher(LightningEnvironment(), num_processes=2, num_nodes=1)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    launcher.procs = [child]
    trainer = SimpleNamespace(world_size=2, global_rank=0,
                              strategy=SimpleNamespace(launcher=launcher))
    try:
        callback = ReportRankFailure()
        callback.on_exception(trainer, None, KeyboardInterrupt())  # type: ignore[arg-type]
        assert child.poll() is None  # Ctrl+C is Lightning's to handle
        callback.on_exception(trainer, None, RuntimeError("boom"))  # type: ignore[arg-type]
        assert child.returncode == -signal.SIGKILL  # already waited for
        assert "train.py: rank 0 failed: RuntimeError: boom" in capsys.readouterr().err
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # Ranks that launched nothing (or a launcher-less strategy) only name themselves.
    for other in (SimpleNamespace(), None):
        trainer.strategy = SimpleNamespace(launcher=other)
        callback.on_exception(trainer, None, RuntimeError("boom"))  # type: ignore[arg-type]
    assert capsys.readouterr().err.count("failed") == 2


# -- checkpoint files ---------------------------------------------------------------------------
def test_atomic_checkpoint_io_takes_str_and_path(tmp_path: Path) -> None:
    from callbacks.atomic_checkpoint_io import AtomicCheckpointIO, partial_path

    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint({"step": 1}, str(tmp_path / "a" / "best.ckpt"))
    io_plugin.save_checkpoint({"step": 2}, tmp_path / "a" / "best.ckpt")
    best = tmp_path / "a" / "best.ckpt"
    assert torch.load(best)["step"] == 2
    assert not partial_path(best).exists()


# -- resuming after the unfreeze ----------------------------------------------------------------
class BodyAndHead(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.ModuleDict({"body": nn.Linear(4, 4), "head": nn.Linear(4, 2)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net["head"](torch.relu(self.net["body"](x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


class RecordBody(Callback):
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.body_before = pl_module.net["body"].weight.detach().clone()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        body = pl_module.net["body"].weight
        self.trains = body.requires_grad and not torch.equal(body.detach(), self.body_before)
        self.lrs = [group["lr"] for group in trainer.optimizers[0].param_groups]


def test_resume_after_the_unfreeze_keeps_the_backbone_training(tmp_path: Path) -> None:
    from callbacks.finetuning import FreezeBackbone

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.arange(16) % 2), batch_size=8)

    def fit(epochs: int, ckpt_path: Path | None = None) -> tuple[FreezeBackbone, RecordBody]:
        freeze, record = FreezeBackbone(unfreeze_at_epoch=1, backbone_lr_ratio=0.5), RecordBody()
        trainer = Trainer(default_root_dir=tmp_path, max_epochs=epochs, logger=False,
                          callbacks=[freeze, record], **QUIET)
        trainer.fit(BodyAndHead(), data, ckpt_path=ckpt_path)
        if ckpt_path is None:
            trainer.save_checkpoint(tmp_path / "unfrozen.ckpt")
        return freeze, record

    _, first = fit(epochs=2)  # epoch 1 unfreezes
    assert first.trains and first.lrs == [0.1, 0.05, 0.05]  # head, body weight, body bias

    freeze, resumed = fit(epochs=3, ckpt_path=tmp_path / "unfrozen.ckpt")
    # Epoch 2 only: setup froze the body again and epoch 1, which unfroze it, does not return.
    assert resumed.trains and resumed.lrs == first.lrs
    assert not freeze.restored  # consumed at the start of the resumed fit
