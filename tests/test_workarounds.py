"""Each workaround's upstream behaviour, checked as it is today: when one of these tests fails,
upstream has changed and the workaround (``workarounds.py``, or the ``last.ckpt`` writing in
``callbacks/checkpoint.py``) can be deleted with its test."""

import logging
import sys
import typing
import warnings
from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import TensorBoardLogger

import workarounds


def test_jsonargparse_reads_1_as_a_fraction_for_a_float_first_union() -> None:
    """read_whole_numbers_as_batch_counts: needed while a float-first union parses 1 as 1.0."""
    float_first = typing._UnionGenericAlias(  # type: ignore[attr-defined]
        typing.Union, (float, int, type(None)))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--limit", type=float_first)
    assert type(parser.parse_args(["--limit=1"]).limit) is float


def test_lightning_leaves_last_ckpt_at_an_older_epoch_when_the_monitor_does_not_improve(
    tmp_path: Path,
) -> None:
    """callbacks.checkpoint.Checkpoint writes last.ckpt itself while this holds."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="step", mode="min", save_last=True)
    trainer = Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[checkpoint])
    trainer.fit(BoringModel())
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 2  # not 6


class DataWithClasses(LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.class_names = ["a", "b"]


class ModelWithoutClassNames(LightningModule):
    def __init__(self, hidden: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()


class LinkingCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.link_arguments("data.class_names", "model.init_args.class_names",
                              apply_on="instantiate")


def test_lightning_cli_records_a_link_the_model_does_not_take(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """drop_link_values_the_model_does_not_take: needed while the hyperparameters LightningCLI
    records name a linked argument the class does not take."""
    monkeypatch.setattr(sys, "argv", ["train.py"])
    cli = LinkingCLI(None, DataWithClasses, run=False, trainer_defaults={"logger": False},
                     args=["--model", "tests.test_workarounds.ModelWithoutClassNames"])
    assert type(cli.model) is ModelWithoutClassNames
    assert cli.model.hparams.get("class_names") == ["a", "b"]
    workarounds.drop_link_values_the_model_does_not_take(cli.model, ("class_names",))
    assert "class_names" not in cli.model.hparams


def test_lightning_still_says_what_the_user_cannot_act_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """quiet_messages_users_cannot_act_on: needed while Lightning advertises litlogger and
    its pytree helper uses the deprecated LeafSpec check."""
    from lightning.pytorch.utilities._pytree import _tree_flatten

    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    monkeypatch.setattr(rank_zero_log, "filters", [])  # train.main may have quieted it here
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(logger=TensorBoardLogger(tmp_path), enable_progress_bar=False)
        _tree_flatten({"loss": torch.tensor(1.0)})
    assert any("litlogger" in record.getMessage() for record in caplog.records)
    assert any("LeafSpec" in str(w.message) for w in caught)


def test_torchdata_stateful_loader_still_calls_the_deprecated_set_vital() -> None:
    """quiet_messages_users_cannot_act_on: needed while building a ``StatefulDataLoader`` warns
    about torch's deprecated ``set_vital``."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        StatefulDataLoader(list(range(4)))
    assert any("set_vital" in str(w.message) for w in caught)


@pytest.mark.parametrize("asks_for_step_count", [False, True])
def test_lightning_drops_a_restored_loader_position_when_optimizers_ask_for_the_step_count(
    tmp_path: Path, asks_for_step_count: bool
) -> None:
    """``datamodules.resume`` keeps the training loader's state in the datamodule's state:
    needed while Lightning #20550 loses the loader state it restores when
    ``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` (OneCycle does)."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    class RecordsFirstBatch(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.first_batch: torch.Tensor | None = None

        def configure_optimizers(self):
            if asks_for_step_count:
                assert self.trainer.estimated_stepping_batches == 16
            return super().configure_optimizers()

        def training_step(self, batch, batch_idx):
            if self.first_batch is None:
                self.first_batch = batch.clone()
            return super().training_step(batch, batch_idx)

    def loader() -> StatefulDataLoader:  # row i holds the value i: 16 batches of 4 rows
        return StatefulDataLoader(torch.arange(64.0).repeat(32, 1).T.contiguous(), batch_size=4)

    def trainer(**kwargs: object) -> Trainer:
        return Trainer(default_root_dir=tmp_path, max_epochs=1, limit_val_batches=0,
                       enable_progress_bar=False, logger=False, **kwargs)

    trainer(callbacks=[ModelCheckpoint(tmp_path, "step{step}", every_n_train_steps=5,
                                       save_top_k=-1, auto_insert_metric_name=False)]
            ).fit(RecordsFirstBatch(), train_dataloaders=loader())
    model = RecordsFirstBatch()
    trainer(enable_checkpointing=False).fit(model, train_dataloaders=loader(),
                                            ckpt_path=tmp_path / "step5.ckpt")
    # The loader's saved state: batch 5 (rows 20..23) is next. With the step count asked for,
    # Lightning starts the loader over at row 0.
    assert model.first_batch is not None
    assert model.first_batch[0, 0].item() == (0.0 if asks_for_step_count else 20.0)


GLOO_EXIT = """
import atexit, os
import torch.distributed as dist
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.utilities.distributed import _init_dist_connection

# Registered first, so it runs after whatever Lightning registers (atexit runs last in first).
atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{port}")
_init_dist_connection(LightningEnvironment(), "gloo", global_rank=0, world_size=1)
"""


@pytest.mark.slow
def test_lightning_leaves_a_gloo_process_group_alive_at_exit(tmp_path: Path) -> None:
    """destroy_the_process_group: needed while Lightning destroys the process group at exit for
    NCCL only, and leaves gloo's alive into interpreter finalization."""
    import socket
    import subprocess

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([sys.executable, "-c", GLOO_EXIT.format(port=port)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert "initialized at exit: True" in done.stdout, done.stdout + done.stderr

