"""train.py end to end, in process (fast): the default run, seeding, resume, plug-in modules,
and the one-line errors for bad options."""

import inspect
import json
import textwrap
import typing
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import train
from tests.conftest import REPO, base_args, log_lines

TINY = [
    "--max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
]


def only_run_dir(logs: Path, name: str = "digits") -> Path:
    runs = sorted((logs / name).glob("version_*"))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
def test_no_subcommand_fits_then_tests_best_checkpoint_and_prints_summary(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lightning.pytorch.trainer.connectors import data_connector

    # As on a 16-CPU machine, where Lightning advises more loader workers (not on 2 CPUs).
    monkeypatch.setattr(data_connector, "suggested_max_num_workers", lambda devices: 15)
    with log_lines() as lightning_said, warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")  # every warning, even ones shown earlier
        cli = train.main([*base_args(digits_root, run_dir / "logs"), *TINY])
    # No noise the user cannot act on: torch's LeafSpec deprecation (raised inside Lightning),
    # Lightning's cloud-logger advert; Lightning's other messages are kept.
    assert not [w for w in warned if "LeafSpec" in str(w.message)]
    assert not [m for m in lightning_said if "litlogger" in m]
    # ... nor advice to undo the config's deliberate num_workers: 0 (data held in memory).
    assert not [w for w in warned if "does not have many workers" in str(w.message)]
    assert any("GPU available" in m for m in lightning_said)

    assert cli.trainer.global_step == 3
    assert "test/acc" in cli.trainer.callback_metrics  # test ran after fit
    run = only_run_dir(run_dir / "logs")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_checkpoint"].startswith(str(run / "checkpoints"))
    assert Path(summary["best_checkpoint"]).is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert 0.0 <= summary["metrics"]["test/acc"] <= 1.0
    out = capsys.readouterr().out
    assert "Run summary" in out
    assert f"tensorboard --logdir {run.parent}" in out
    assert "best checkpoint" in out


@pytest.mark.slow
def test_asking_for_a_profiler_still_profiles(run_dir: Path, digits_root: Path) -> None:
    from lightning.pytorch.profilers import SimpleProfiler

    args = ["fit", *base_args(digits_root, run_dir / "logs"), *TINY]
    assert type(train.main(args).trainer.profiler).__name__ == "PassThroughProfiler"
    cli = train.main([*args, "--trainer.profiler=simple"])
    assert isinstance(cli.trainer.profiler, SimpleProfiler)
    recorded = cli.trainer.profiler.recorded_durations
    assert len(recorded["[Strategy]SingleDeviceStrategy.training_step"]) == 3
    assert any(key.startswith("[Callback]Checkpoint") for key in recorded)


@pytest.mark.slow
def test_same_seed_gives_identical_weights_and_seed_is_saved_in_run_config(
    run_dir: Path, digits_root: Path
) -> None:
    states = []
    for name in ("a", "b"):
        logs = run_dir / name
        train.main([*base_args(digits_root, logs), *TINY, "--seed=3"])
        run = only_run_dir(logs)
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["seed_everything"] == 3
        last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        states.append(last["state_dict"])
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


class CrashInSecondEpoch(__import__("lightning").pytorch.Callback):
    """Simulates a job that dies after its first epoch was checkpointed."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
def test_limit_batches_of_1_means_one_batch_even_where_typing_cached_a_float_first_union(
    run_dir: Path, digits_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where another module built Union[float, int] before Lightning's Trainer was defined
    (torch 2.11 on Python 3.12), typing's cache hands the Trainer that float-first union and
    jsonargparse read 1 as 1.0 = every batch. Recreated here by giving the Trainer such a
    union directly (typing's constructor, past its cache)."""
    annotations = inspect.unwrap(train.Trainer.__init__).__annotations__
    float_first = typing._UnionGenericAlias(  # type: ignore[attr-defined]
        typing.Union, (float, int, type(None)))
    for name in ("limit_train_batches", "limit_val_batches"):
        monkeypatch.setitem(annotations, name, float_first)
    cli = train.main(["fit", *base_args(digits_root, run_dir / "logs"), "--max_epochs=1",
                      "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])
    assert cli.trainer.limit_train_batches == 1 and type(cli.trainer.limit_train_batches) is int
    assert type(cli.trainer.limit_val_batches) is int
    assert cli.trainer.global_step == 1


@pytest.mark.slow
def test_resume_from_last_continues_the_same_run_and_global_step(
    run_dir: Path, digits_root: Path
) -> None:
    logs = run_dir / "logs"
    args = [*base_args(digits_root, logs), "--max_epochs=2", "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main([*args, "--trainer.callbacks+=tests.test_train_cli.CrashInSecondEpoch"])
    run = only_run_dir(logs)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3

    cli = train.main([*args, "--ckpt_path=last"])

    assert cli.trainer.global_step == 6  # continued from 3, not restarted from 0
    assert cli.trainer.current_epoch == 2
    assert only_run_dir(logs) == run  # same version folder: logs and checkpoints continue
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    # The summary's best epoch is that of the whole run, the one whose checkpoint was tested,
    # also when it came before the resume.
    summary = json.loads((run / "summary.json").read_text())
    best = cli.trainer.checkpoint_callback.best_model_path
    assert Path(best).name.startswith(f"epoch{summary['best_epoch']:02d}-")
    assert summary["best_epoch_metrics"]["val/loss"] == pytest.approx(
        summary["best_score"], abs=1e-6)
    # The run is finished: resuming it again trains nothing, so it is refused, records kept.
    with pytest.raises(SystemExit) as exit_info:
        train.main([*args, "--ckpt_path=last"])
    assert exit_info.value.code == 2
    assert json.loads((run / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_resume_with_a_longer_schedule_is_refused_with_advice(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = run_dir / "logs"
    train.main([*base_args(digits_root, logs), *TINY])
    checkpoints = sorted((logs / "digits" / "version_0" / "checkpoints").iterdir())
    written = {path: path.stat().st_mtime_ns for path in checkpoints}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main([*base_args(digits_root, logs), *TINY, "--max_epochs=2", "--ckpt_path=last"])
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("train.py: error: the checkpoint's OneCycleLR spans 3 steps but this "
                           "run has 6")
    # No exception checkpoint claims a resumable state the same refusal would meet again.
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == written
    assert sorted((logs / "digits" / "version_0" / "checkpoints").iterdir()) == checkpoints


@pytest.mark.slow
def test_lightning_module_from_outside_the_repo_trains_by_class_path(
    run_dir: Path, digits_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = run_dir / "plugin"
    plugin.mkdir()
    (plugin / "my_plugin_module.py").write_text(textwrap.dedent("""
        import torch
        import torch.nn.functional as F
        from lightning.pytorch import LightningModule
        from torch import nn

        class TinyMLP(LightningModule):
            def __init__(self, hidden: int = 16, lr: float = 0.05):
                super().__init__()
                self.save_hyperparameters()
                # 144 = 12 x 12: the default digits batches are padded from 8x8.
                self.net = nn.Sequential(nn.Flatten(), nn.Linear(144, hidden), nn.ReLU(),
                                         nn.Linear(hidden, 10))

            def training_step(self, batch, batch_idx):
                x, y = batch
                return F.cross_entropy(self.net(x), y)

            def validation_step(self, batch, batch_idx):
                x, y = batch
                logits = self.net(x)
                self.log("val/loss", F.cross_entropy(logits, y))  # the checkpoint's monitor
                self.log("val/acc", (logits.argmax(1) == y).float().mean())

            def test_step(self, batch, batch_idx):
                x, y = batch
                self.log("test/acc", (self.net(x).argmax(1) == y).float().mean())

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
    """))
    monkeypatch.syspath_prepend(str(plugin))

    cli = train.main([*base_args(digits_root, run_dir / "logs"), *TINY,
                      "--model=my_plugin_module.TinyMLP", "--model.hidden=24"])

    assert type(cli.model).__name__ == "TinyMLP"
    assert cli.model.hparams.hidden == 24
    assert cli.trainer.global_step == 3
    assert "test/acc" in cli.trainer.callback_metrics


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config=does/not/exist.yaml"], "does/not/exist.yaml"),
        (["--model=no_such_package.Model"], "no_such_package.Model"),
        (["--no_such_option=1"], "unrecognized arguments: --no_such_option"),
        (["--max_epochs=many"], 'key "trainer.max_epochs"'),
    ],
    ids=["missing-config", "unknown-class-path", "unknown-option", "wrong-type"],
)
def test_bad_option_gives_one_line_error_naming_it(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("train.py: error:")
    assert expected in err
    assert "Traceback" not in err


def test_print_config_shows_the_resolved_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--print_config", "--max_epochs=7"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["max_epochs"] == 7  # the alias reached the trainer
    assert config["model"]["class_path"] == "models.classifier.ImageClassifier"
    assert config["model"]["init_args"]["scheduler"]["class_path"].endswith("OneCycleLR")
    assert config["data"]["class_path"] == "datamodules.digits.DigitsDataModule"


@pytest.mark.parametrize("how", ["config_file", "command_line"])
def test_choosing_your_own_data_inherits_none_of_the_digits_settings(
    how: str, tmp_path: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """jsonargparse keeps the init_args a new data class shares with the old one: had the digits
    been loaded, a user's images would be padded, normalised with digits statistics, cached,
    batched by 16 and logged under logs/digits."""
    labels = str(digits_root / "labels.csv")
    own = {"data": {"class_path": "datamodules.image_csv.ImageCSVDataModule",
                    "init_args": {"annotations": labels}},
           "model": {"class_path": "models.classifier.ImageClassifier"}}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(own))
    args = (["--config", str(tmp_path / "mine.yaml")] if how == "config_file" else
            ["--data", "datamodules.image_csv.ImageCSVDataModule",
             f"--data.init_args.annotations={labels}", "--model",
             "models.classifier.ImageClassifier"])
    with pytest.raises(SystemExit) as exit_info:
        train.main([*args, "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    data = config["data"]["init_args"]
    assert (data["batch_size"], data["cache_images"], data["read_mode"]) == (64, "auto", "RGB")
    assert data["train_batch_transforms"] is None and data["eval_batch_transforms"] is None
    assert config["trainer"]["logger"]["init_args"]["name"] != "digits"


@pytest.mark.slow
def test_what_every_run_does_is_in_the_printed_config_and_can_be_removed(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        train.main(["--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    listed = [entry["class_path"].rpartition(".")[2] for entry in config["trainer"]["callbacks"]]
    assert {"RunSummary", "RNGState", "StopOnNonFiniteLoss", "ReportRankFailure",
            "CheckModelTakesData", "PreprocessingMetadata", "LearningRateMonitor",
            "GradNormLogger", "default_progress_bar"} == set(listed)
    assert [p["class_path"] for p in config["trainer"]["plugins"]] == [
        "callbacks.atomic_checkpoint_io.AtomicCheckpointIO"]

    # A config's `callbacks+:` appends to that list; `callbacks: []` and `plugins: []` empty it.
    args = ["fit", *base_args(digits_root, run_dir / "logs"), *TINY]
    (run_dir / "more.yaml").write_text(
        "trainer:\n  callbacks+:\n    - class_path: lightning.pytorch.callbacks.EarlyStopping\n"
        "      init_args: {monitor: val/loss}\n")
    added = train.main([*args, f"--config={run_dir / 'more.yaml'}"]).trainer
    names = [type(c).__name__ for c in added.callbacks]
    assert "EarlyStopping" in names and "RunSummary" in names
    removed = train.main([*args, "--trainer.callbacks=[]", "--trainer.plugins=[]"]).trainer
    names = {type(c).__name__ for c in removed.callbacks}
    assert not names & {"RunSummary", "RNGState", "StopOnNonFiniteLoss", "ReportRankFailure"}
    assert type(removed.strategy.checkpoint_io).__name__ != "AtomicCheckpointIO"


def test_the_readmes_image_table_config_parses_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("# my_data.yaml — python train.py --config my_data.yaml\n", 1)[1]
    (tmp_path / "my_data.yaml").write_text(block.split("```", 1)[0])
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", str(tmp_path / "my_data.yaml"), "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["init_args"]["annotations"] == "/data/pets/labels.csv"
    assert config["data"]["init_args"]["train_batch_transforms"] is None  # no digits settings
    assert config["model"]["init_args"]["backbone"]["init_args"]["name"] == "resnet18"


def test_a_model_that_needs_num_classes_from_data_that_has_none_is_one_line(
    run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (run_dir / "their_code.py").write_text(textwrap.dedent("""
        from lightning.pytorch import LightningDataModule, LightningModule

        class PlainData(LightningDataModule):
            pass

        class NeedsClasses(LightningModule):
            def __init__(self, num_classes: int):
                super().__init__()
    """))
    monkeypatch.syspath_prepend(str(run_dir))
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--data=their_code.PlainData", "--model=their_code.NeedsClasses"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("train.py: error:"), err
    assert "NeedsClasses needs num_classes, which the data (PlainData) does not give" in err
