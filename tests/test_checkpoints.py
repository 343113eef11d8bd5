"""Checkpoints from elsewhere: a file that names code outside what the run trusts is refused
before anything is imported; a file that is not a checkpoint, another run's checkpoint given to
resume, and ``--ckpt_path last`` with nothing to evaluate are refused in one line."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

import train
from models import export
from tests.conftest import REPO, base_args, log_lines, pythonpath_with

INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
# A module with a side effect on import, where a user's own code could be: on the path.
PLANTED = '''
from pathlib import Path
Path({marker!r}).write_text("imported")

def run(cls, kwargs):
    Path({marker!r}).write_text("ran")

class Net:
    pass
'''
# What the checkpoint names, per way of getting code run.
UNTRUSTED = {
    "instantiator": {"_class_path": "models.classifier.ImageClassifier",
                     "_instantiator": "planted.run"},
    "model class": {"_class_path": "planted.Net", "_instantiator": INSTANTIATOR},
    "nested class_path": {"_class_path": "models.classifier.ImageClassifier",
                          "_instantiator": INSTANTIATOR,
                          "backbone": {"class_path": "planted.Net", "init_args": {}}},
}
WHAT_IS_NAMED = {"instantiator": "'planted.run'", "model class": "'planted.Net'",
                 "nested class_path": "'planted.Net'"}


def planted_checkpoint(folder: Path, case: str) -> tuple[Path, Path]:
    """A checkpoint naming ``planted`` as ``case`` says, beside ``planted.py``; the marker
    file that importing or running it would write."""
    marker = folder / "code-ran"
    (folder / "planted.py").write_text(PLANTED.format(marker=str(marker)))
    path = folder / f"{case.replace(' ', '_')}.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0,
                "hyper_parameters": UNTRUSTED[case]}, path)
    return path, marker


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("case", list(UNTRUSTED))
def test_a_checkpoint_naming_untrusted_code_is_refused_by_export_and_nothing_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    ckpt, marker = planted_checkpoint(tmp_path, case)
    monkeypatch.syspath_prepend(str(tmp_path))

    assert export.main([f"--ckpt_path={ckpt}", "--format=torchscript"]) == 1
    line = one_line(capsys)
    assert line.startswith(f"export: error: {ckpt}: refused") and WHAT_IS_NAMED[case] in line
    assert not marker.exists() and "planted" not in sys.modules


# fit is the quick contract; test and predict reach the same check through use_checkpoint.
@pytest.mark.parametrize("stage", ["fit", *(pytest.param(stage, marks=pytest.mark.slow)
                                            for stage in ("test", "predict"))])
def test_a_checkpoint_naming_untrusted_code_is_refused_by_train_py_in_one_line(
    run_dir: Path, digits_root: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], stage: str,
) -> None:
    ckpt, marker = planted_checkpoint(run_dir, "nested class_path")
    monkeypatch.syspath_prepend(str(run_dir))
    predict = [f"--data.init_args.predict_path={digits_root / 'images'}"]

    with pytest.raises(SystemExit) as exit_info:
        train.main([stage, *base_args(digits_root, run_dir / "logs"), f"--ckpt_path={ckpt}",
                    *(predict if stage == "predict" else [])])
    assert exit_info.value.code == 2
    line = one_line(capsys)
    assert line.startswith(f"train.py: error: {ckpt}: refused, it names the class 'planted.Net'")
    assert not marker.exists() and "planted" not in sys.modules
    assert not (run_dir / "logs").exists()


@pytest.mark.slow
def test_every_command_refuses_every_way_of_naming_untrusted_code_as_a_real_process(
    tmp_path: Path, digits_root: Path
) -> None:
    """The same as above, as a user runs them: train.py fit/test/predict and models.export,
    each a process of its own, for each way a checkpoint can name code."""
    runs = {}
    for case in UNTRUSTED:
        folder = tmp_path / case.replace(" ", "_")
        folder.mkdir()
        ckpt, marker = planted_checkpoint(folder, case)
        train_args = [*base_args(digits_root, folder / "logs"), f"--ckpt_path={ckpt}"]
        for name, argv in {
            "fit": [str(REPO / "train.py"), "fit", *train_args],
            "test": [str(REPO / "train.py"), "test", *train_args],
            "predict": [str(REPO / "train.py"), "predict", *train_args,
                        f"--data.init_args.predict_path={digits_root / 'images'}"],
            "export": ["-m", "models.export", f"--ckpt_path={ckpt}"],
        }.items():
            runs[(case, name)] = (argv, folder, marker, ckpt)

    def run(item: tuple[list[str], Path, Path, Path]) -> subprocess.CompletedProcess[str]:
        argv, folder, _, _ = item
        # The planted module is importable, as a user's own code next to the run would be.
        env = {**os.environ, "PYTHONPATH": pythonpath_with(REPO, folder)}
        return subprocess.run([sys.executable, *argv], cwd=folder, capture_output=True,
                              text=True, timeout=300, check=False, env=env)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(zip(runs, pool.map(run, runs.values()), strict=True))
    for (case, name), result in results.items():
        _, folder, marker, ckpt = runs[(case, name)]
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert result.returncode != 0 and len(errors) == 1, (case, name, result.stderr)
        assert f"{ckpt}: refused" in errors[0] and WHAT_IS_NAMED[case] in errors[0], errors
        assert "Traceback" not in result.stderr, (case, name, result.stderr)
        assert not marker.exists(), (case, name)
        assert not (folder / "logs").exists(), (case, name)


def not_checkpoints(folder: Path) -> dict[str, Path]:
    """Files a user might pass by mistake: empty, cut short, text, a tensor."""
    whole = folder / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 0}, whole)
    files = {"empty": b"", "truncated": whole.read_bytes()[: whole.stat().st_size // 2],
             "text": b"epoch: 3\nthis is a config, not a checkpoint\n"}
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.ckpt"
        paths[name].write_bytes(content)
    paths["a tensor"] = folder / "tensor.ckpt"
    torch.save(torch.zeros(3), paths["a tensor"])
    return paths


@pytest.mark.slow
def test_a_file_that_is_not_a_checkpoint_is_one_line_naming_it(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    for kind, path in not_checkpoints(run_dir).items():
        with pytest.raises(SystemExit) as exit_info:
            train.main(["test", *base_args(digits_root, run_dir / "logs"), f"--ckpt_path={path}"])
        assert exit_info.value.code == 2, kind
        line = one_line(capsys)
        assert line.startswith(f"train.py: error: {path} is not a"), (kind, line)

        assert export.main([f"--ckpt_path={path}"]) == 1
        assert one_line(capsys).startswith(f"export: error: {path} is not a"), kind
    assert not (run_dir / "logs").exists()


@pytest.mark.parametrize("stage", ["test", "validate", "predict"])
@pytest.mark.slow
def test_evaluating_last_with_no_run_is_refused_instead_of_a_random_model(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str], stage: str,
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main([stage, *base_args(digits_root, run_dir / "logs"), "--ckpt_path=last",
                    f"--data.init_args.predict_path={digits_root / 'images'}"])
    assert exit_info.value.code == 2
    assert one_line(capsys) == (
        f"train.py: error: --ckpt_path last: no last.ckpt under {run_dir / 'logs' / 'digits'}: "
        f"nothing to {stage}; train first or give the checkpoint's path")
    assert not list(run_dir.rglob("*summary.json"))


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> Path:
    """last.ckpt of a one-epoch digits run (a few batches)."""
    logs = tmp_path_factory.mktemp("digits_run") / "logs"
    cli = train.main(["fit", *base_args(digits_root, logs), "--max_epochs=1",
                      "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"])
    return Path(cli.trainer.checkpoint_callback.last_model_path)


@pytest.mark.parametrize(
    ("options", "difference"),
    [
        (["--model=models.regressor.Regressor", "--data.init_args.task=regression"],
         "model models.classifier.ImageClassifier (this run: models.regressor.Regressor); "
         "task multiclass (this run: regression)"),
        (["--config", str(REPO / "configs/breast_cancer.yaml")],
         "data datamodules.digits.DigitsDataModule (this run: "
         "datamodules.breast_cancer.BreastCancerDataModule)"),
        (["--data.init_args.task=multilabel", "--data.init_args.label_delimiter=;"],
         "task multiclass (this run: multilabel)"),
    ],
    ids=["another model and task", "another data class", "another task"],
)
@pytest.mark.slow
def test_resuming_with_another_runs_checkpoint_is_refused_naming_the_difference(
    run_dir: Path, digits_root: Path, digits_checkpoint: Path,
    capsys: pytest.CaptureFixture[str], options: list[str], difference: str,
) -> None:
    capsys.readouterr()
    args = base_args(digits_root, run_dir / "logs")
    if "--config" in options:  # other data: the digits' root option does not apply
        args = [a for a in args if not a.startswith("--data.")]
    with pytest.raises(SystemExit) as exit_info:
        train.main(["fit", *args, *options, f"--ckpt_path={digits_checkpoint}"])
    assert exit_info.value.code == 2
    line = one_line(capsys)
    assert line.startswith(f"train.py: error: {digits_checkpoint} is another run's checkpoint: "
                           f"{difference}"), line
    assert not (run_dir / "logs").exists()


OTHER_MODULE = """
import torch
from lightning.pytorch import LightningModule


class Other(LightningModule):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.head = torch.nn.LazyLinear(num_classes)
"""


@pytest.mark.slow
def test_testing_another_class_checkpoint_uses_it_and_says_so(
    run_dir: Path, digits_root: Path, digits_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (run_dir / "other_module.py").write_text(OTHER_MODULE)
    monkeypatch.syspath_prepend(str(run_dir))
    with log_lines() as lines:
        cli = train.main(["test", *base_args(digits_root, run_dir / "logs"),
                          "--model=other_module.Other", f"--ckpt_path={digits_checkpoint}"])
    assert ("test: the checkpoint holds a models.classifier.ImageClassifier; it is used instead "
            "of the configured other_module.Other") in lines
    assert type(cli.model).__name__ == "ImageClassifier"
    assert "test/acc" in cli.trainer.callback_metrics


class RecordStartWeights(Callback):
    """The model's tensors when training starts (after every on_fit_start)."""

    state: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        RecordStartWeights.state = {k: v.clone() for k, v in pl_module.state_dict().items()}


INITIAL = ["--trainer.callbacks+=callbacks.initial_weights.InitialWeights",
           "--trainer.callbacks+=tests.test_checkpoints.RecordStartWeights"]


ONE_STEP = ["--max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]


def initial_weights_from(checkpoint: Path) -> list[str]:
    return [INITIAL[0], f"--trainer.callbacks.init_args.path={checkpoint}", INITIAL[1]]


def test_a_new_run_starts_from_another_runs_weights_and_says_what_matched(
    run_dir: Path, digits_root: Path, digits_checkpoint: Path,
) -> None:
    saved = torch.load(digits_checkpoint, weights_only=True)["state_dict"]
    weights = initial_weights_from(digits_checkpoint)

    # The same model: every tensor, and a new run (epoch 0, step 0, a new version folder).
    with log_lines() as said:
        cli = train.main(["fit", *base_args(digits_root, run_dir / "logs"), *ONE_STEP, *weights])
    (line,) = [m for m in said if m.startswith("InitialWeights")]
    assert line == (f"InitialWeights: {len(saved)} of ImageClassifier's {len(saved)} tensors "
                    f"from {digits_checkpoint}; left as initialised: none; not used from the "
                    "file: none")
    assert all(torch.equal(RecordStartWeights.state[k], v) for k, v in saved.items())
    assert cli.trainer.global_step == 1
    run = Path(cli.trainer.log_dir)
    assert run != digits_checkpoint.parents[1]  # a new run folder


@pytest.mark.slow
def test_initial_weights_give_way_to_a_resume_and_load_what_fits_another_task(
    run_dir: Path, digits_root: Path, digits_checkpoint: Path,
) -> None:
    saved = torch.load(digits_checkpoint, weights_only=True)["state_dict"]
    weights = initial_weights_from(digits_checkpoint)
    # No schedule sized by the run's length: the resume below may train one more epoch.
    no_schedule = "--model.init_args.scheduler=null"
    cli = train.main(["fit", *base_args(digits_root, run_dir / "logs"), *ONE_STEP, *weights,
                      no_schedule])
    run = Path(cli.trainer.log_dir)

    # The same command resumed to train on: the run's own weights continue, the file is not
    # loaded again.
    with log_lines() as said:
        train.main(["fit", *base_args(digits_root, run_dir / "logs"), *ONE_STEP, *weights,
                    no_schedule, "--max_epochs=2",
                    f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    assert [m for m in said if m.startswith("InitialWeights")] == [
        f"InitialWeights: resuming from {run / 'checkpoints' / 'last.ckpt'}, so "
        f"{digits_checkpoint} is not loaded"]

    # Another task: the backbone's tensors load, the head sized for one output does not.
    with log_lines() as said:
        cli = train.main(["fit", *base_args(digits_root, run_dir / "logs"), *ONE_STEP, *weights,
                          "--model=models.regressor.Regressor",
                          "--data.init_args.task=regression"])
    (line,) = [m for m in said if m.startswith("InitialWeights")]
    left = [k for k, v in cli.model.state_dict().items()
            if k not in saved or saved[k].shape != v.shape]
    assert left and all("head" in k or "target_" in k for k in left), left
    assert line.startswith(f"InitialWeights: {len(saved) - 2} of Regressor's")
    assert "left as initialised: " + ", ".join(left[:3]) in line


@pytest.mark.slow
def test_the_summary_names_last_ckpt_when_the_best_epoch_is_the_first(
    run_dir: Path, digits_root: Path
) -> None:
    import json

    # mode max on the loss: the first epoch is the best, and fit-then-test tests its file.
    train.main([*base_args(digits_root, run_dir / "logs"), "--max_epochs=2",
                "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
                "--trainer.limit_test_batches=2", "--checkpoint.mode=max"])
    run = run_dir / "logs" / "digits" / "version_0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == 0 and "epoch00" in summary["best_checkpoint"]
    assert summary["last_checkpoint"] == str(run / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_resuming_a_finished_run_is_refused_and_leaves_its_records(
    digits_root: Path, digits_checkpoint: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # The one-epoch run's own logs: a resume would train nothing, then rewrite its summary.
    run_dir = digits_checkpoint.parents[1]
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main(["fit", *base_args(digits_root, run_dir.parents[1]), "--max_epochs=1",
                    f"--ckpt_path={digits_checkpoint}"])
    assert exit_info.value.code == 2
    line = one_line(capsys)
    assert line.startswith(f"train.py: error: {digits_checkpoint} is a finished run (1 of "
                           "max_epochs 1 done): nothing to train; raise --max_epochs"), line
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
