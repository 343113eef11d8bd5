"""Using a trained model: predict to CSV (1 and 2 processes, unreadable files skipped), ONNX and
TorchScript export with parity, and the README's plain-PyTorch loading snippet."""

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchvision.io import ImageReadMode

import train
from datamodules.validation import load_image
from models import export
from models.classifier import ImageClassifier
from tests.conftest import REPO, log_lines, run_train_subprocess

# Word labels, so "labels are class names" cannot pass by printing indices.
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TINY_FIT = ["--max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=1"]
READABLE = 21  # odd, so two ranks get shards of different sizes


class Trained:
    """A checkpoint from a tiny fit, the folder it ran in, and a predict folder."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "data" / "digits"
        self.logs = workdir / "logs"
        self.ckpt = self.logs / "digits" / "version_0" / "checkpoints" / "last.ckpt"
        self.predict_dir = workdir / "to_predict"
        self.readable: list[Path] = []
        self.unreadable: list[Path] = []

    def args(self) -> list[str]:
        """The digits run's model and settings on the relabelled images, read as any CSV +
        image folder."""
        return ["--config", str(REPO / "configs" / "digits.yaml"),
                "--data", "datamodules.image_csv.ImageCSVDataModule",
                f"--data.init_args.annotations={self.data / 'labels.csv'}",
                "--data.init_args.read_mode=GRAY",
                f"--trainer.logger.init_args.save_dir={self.logs}",
                f"--trainer.default_root_dir={self.logs}", "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> Trained:
    run = Trained(tmp_path_factory.mktemp("predict_export"))
    # 400 digits relabelled with words, laid out as the README's snippet expects them.
    labels = pd.read_csv(digits_root / "labels.csv").iloc[:400]
    (run.data / "images").mkdir(parents=True)
    for name in labels["path"]:
        shutil.copy(digits_root / name, run.data / name)
    labels.assign(label=[WORDS[i] for i in labels["label"]]).to_csv(run.data / "labels.csv",
                                                                   index=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(run.workdir)
        train.main(["fit", *run.args(), *TINY_FIT])
    assert run.ckpt.is_file()

    # Readable images, some in a subfolder; a truncated PNG, a text file named .png, and a
    # file that is not an image by its suffix (ignored, not reported).
    sources = sorted((digits_root / "images").glob("*.png"))[1000:1000 + READABLE]
    for i, source in enumerate(sources):
        target = run.predict_dir / ("sub" if i % 3 == 0 else "") / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        run.readable.append(target)
    truncated = run.predict_dir / "truncated.png"
    truncated.write_bytes(sources[0].read_bytes()[:60])
    text = run.predict_dir / "sub" / "notes.png"
    text.write_text("not an image")
    (run.predict_dir / "README.txt").write_text("ignored")
    run.unreadable = [truncated, text]
    return run


class ModeProbe(Callback):
    """Records the grad mode and train/eval flags the model had while predicting."""

    seen: list[tuple[bool, bool]] = []

    def on_predict_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        any_training = any(m.training for m in pl_module.modules())
        ModeProbe.seen.append((torch.is_inference_mode_enabled(), any_training))


def preprocessed(paths: list[Path]) -> torch.Tensor:
    """The digits' eval pipeline by hand: Pad(2), scale to [0, 1], Normalize(0.3, 0.4)."""
    images = torch.stack([load_image(p, ImageReadMode.GRAY) for p in paths])
    padded = torch.nn.functional.pad(images.float() / 255, (2, 2, 2, 2))
    return (padded - 0.3) / 0.4


def lightning_probs(ckpt: Path, x: torch.Tensor) -> torch.Tensor:
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    with torch.inference_mode():
        return model.eval()(x).softmax(dim=1)


def check_predictions(table: pd.DataFrame, run: Trained) -> None:
    assert len(table) == READABLE
    assert list(table["path"]) == [str(p) for p in sorted(run.readable)]  # input order
    assert list(table.columns) == ["path", "label", *[f"prob_{w}" for w in sorted(WORDS)]]
    probs = table.filter(like="prob_").to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert set(table["label"]) <= set(WORDS)
    argmax = table.filter(like="prob_").idxmax(axis=1).str.removeprefix("prob_")
    assert list(table["label"]) == list(argmax)


@pytest.mark.slow
def test_predict_writes_one_row_per_readable_image_and_reports_the_unreadable(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "preds.csv"
    ModeProbe.seen = []
    with pytest.warns(UserWarning, match=r"skipping 2 of 23 image\(s\) that cannot be read") as w:
        train.main(["predict", *trained.args(), f"--ckpt_path={trained.ckpt}",
                    f"--data.init_args.predict_path={trained.predict_dir}",
                    f"--trainer.callbacks.init_args.output_path={output}",
                    "--data.init_args.batch_size=8",
                    "--trainer.callbacks+=tests.test_predict_export.ModeProbe"])

    table = pd.read_csv(output)
    check_predictions(table, trained)
    # Each unreadable file is named in the warning and in the skipped list.
    message = next(str(r.message) for r in w if "cannot be read" in str(r.message))
    for path in trained.unreadable:
        assert str(path) in message
    skipped = pd.read_csv(tmp_path / "preds.skipped.csv")
    assert sorted(skipped["path"]) == sorted(str(p) for p in trained.unreadable)
    assert f"Predictions: {READABLE} rows written to {output}" in capsys.readouterr().out
    # Eval mode under inference mode, for every batch (3 of 8, 8, 5).
    assert ModeProbe.seen == [(True, False)] * 3
    # Same numbers as the checkpoint's model in eval mode on the same preprocessing: dropout
    # and BatchNorm batch statistics would change them. The probabilities are what
    # ImageClassifier's predict_step returns (its softmax), written as they are.
    expected = lightning_probs(trained.ckpt, preprocessed(list(table["path"].map(Path))))
    np.testing.assert_allclose(table.filter(like="prob_").to_numpy(), expected.numpy(),
                               atol=1e-5)
    # The training run's own files were not replaced by predict's.
    run_dir = trained.ckpt.parent.parent
    assert json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert str(trained.predict_dir) not in (run_dir / "config.yaml").read_text()


@pytest.mark.slow
def test_testing_a_runs_checkpoint_keeps_the_runs_config_and_summary(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(trained.workdir)
    run_dir = trained.ckpt.parent.parent
    fit_config = (run_dir / "config.yaml").read_text()
    fit_summary = (run_dir / "summary.json").read_text()
    train.main(["test", *trained.args(), f"--ckpt_path={trained.ckpt}",
                "--trainer.limit_test_batches=2"])
    # test logs into the run's folder (resolve_last_checkpoint) but under its own names.
    assert (run_dir / "config.yaml").read_text() == fit_config
    assert (run_dir / "summary.json").read_text() == fit_summary
    assert "limit_test_batches: 2" in (run_dir / "test_config.yaml").read_text()
    tested = json.loads((run_dir / "test_summary.json").read_text())
    assert "test/acc" in tested["metrics"]


@pytest.mark.slow
def test_predict_from_a_table_keeps_its_row_order_and_relative_paths(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rows = sorted(trained.readable, reverse=True)[:5]
    table_path = trained.predict_dir / "batch.csv"
    pd.DataFrame({"path": [p.relative_to(trained.predict_dir) for p in rows]}).to_csv(
        table_path, index=False)
    train.main(["predict", *trained.args(), f"--ckpt_path={trained.ckpt}",
                f"--data.init_args.predict_path={table_path}"])

    table = pd.read_csv(trained.ckpt.parent.parent / "predictions.csv")  # the default output
    assert list(table["path"]) == [str(p) for p in rows]
    assert set(table["label"]) <= set(WORDS)


@pytest.mark.slow
def test_predict_with_the_runs_own_config_still_writes_the_predictions(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The run's config.yaml holds the whole callbacks list of fit, which replaces the list
    # predict.yaml appends the writer to.
    monkeypatch.chdir(tmp_path)
    run_dir = trained.ckpt.parent.parent
    output = run_dir / "predictions.csv"
    output.unlink(missing_ok=True)
    with log_lines() as said:
        train.main(["predict", "--config", str(run_dir / "config.yaml"),
                    f"--ckpt_path={trained.ckpt}",
                    f"--data.init_args.predict_path={trained.predict_dir}"])
    assert any("no prediction writer; added PredictionCSVWriter" in line for line in said)
    assert len(pd.read_csv(output)) == READABLE


def test_predict_without_a_checkpoint_is_refused(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        train.main(["predict", *trained.args(),
                    f"--data.init_args.predict_path={trained.predict_dir}"])
    assert "predict needs --ckpt_path" in capsys.readouterr().err


def test_a_failed_predict_leaves_the_training_run_folder_as_it_was(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    run_folder = trained.ckpt.parents[1]
    before = sorted(p.relative_to(run_folder) for p in run_folder.rglob("*"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        train.main(["predict", *trained.args(), f"--ckpt_path={trained.ckpt}",
                    f"--data.init_args.predict_path={tmp_path / 'empty'}"])
    assert exit_info.value.code == 2
    assert f"predict_path {tmp_path / 'empty'}: no image files" in capsys.readouterr().err
    assert sorted(p.relative_to(run_folder) for p in run_folder.rglob("*")) == before


@pytest.mark.slow
@pytest.mark.ddp
def test_predict_on_two_processes_writes_each_input_once(trained: Trained, tmp_path: Path) -> None:
    output = tmp_path / "ddp.csv"
    result = run_train_subprocess(
        ["predict", *trained.args(), "--devices=2", f"--ckpt_path={trained.ckpt}",
         f"--data.init_args.predict_path={trained.predict_dir}",
         f"--trainer.callbacks.init_args.output_path={output}", "--data.init_args.batch_size=4"],
        cwd=tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert log.count("that cannot be read") == 1  # warned by rank 0 only
    table = pd.read_csv(output)
    check_predictions(table, trained)
    expected = lightning_probs(trained.ckpt, preprocessed(list(table["path"].map(Path))))
    np.testing.assert_allclose(table.filter(like="prob_").to_numpy(), expected.numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=pytest.mark.slow), "torchscript"])
def test_export_matches_the_lightning_model_and_describes_its_input(
    trained: Trained, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model_file = tmp_path / f"model.{fmt}"
    assert export.main(["--ckpt_path", str(trained.ckpt), "--format", fmt,
                        "--output", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "output Nx10 (task multiclass: eight, five, four, nine, one, ...)" in out
    assert "Parity: max |output difference|" in out

    meta = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert meta["class_names"] == meta["output_names"] == sorted(WORDS)
    assert meta["task"] == "multiclass"
    # Measured from the exported forward: one logit per class.
    assert meta["output_shape"] == [10] and meta["output_name"] == "logits"
    assert meta["output"].startswith("logits, shape (N, 10): one per class")
    assert meta["input_shape"] == [1, 12, 12]  # 8x8 after the eval batch transforms' Pad(2)
    assert meta["input_name"] == "images"
    assert meta["read_mode"] == "GRAY"
    assert meta["mean"] == pytest.approx([0.3]) and meta["std"] == pytest.approx([0.4])
    assert meta["parity"]["max_abs_diff"] <= meta["parity"]["tolerance"] == 1e-4

    # Independently of the export's own check: real images, two batch sizes.
    model = ImageClassifier.load_from_checkpoint(trained.ckpt, map_location="cpu",
                                                 weights_only=True).eval()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model_file),
                                               providers=["CPUExecutionProvider"])
        assert isinstance(session.get_inputs()[0].shape[0], str)  # a symbolic batch axis
        def run(x: torch.Tensor) -> np.ndarray:
            return session.run(None, {"images": x.numpy()})[0]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            extra = {"metadata.json": ""}
            scripted = torch.jit.load(str(model_file), _extra_files=extra)
        assert json.loads(extra["metadata.json"])["class_names"] == sorted(WORDS)
        def run(x: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return scripted(x).numpy()
    for paths in (trained.readable[:5], trained.readable[5:8]):
        x = preprocessed(paths)
        with torch.inference_mode():
            expected = model(x).numpy()
        np.testing.assert_allclose(run(x), expected, atol=1e-4, rtol=0)


def test_readme_plain_pytorch_snippet_loads_the_weights_without_lightning(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (REPO / "docs" / "predict_export.md").read_text()
    block = re.search(r"<!-- plain-pytorch:start -->\n```python\n(.*?)```\n"
                      r"<!-- plain-pytorch:end -->", readme, re.DOTALL)
    assert block, "docs/predict_export.md lost its plain-PyTorch snippet markers"
    monkeypatch.chdir(trained.workdir)  # its paths are relative, as a user would run it
    namespace: dict[str, object] = {}
    exec(compile(block.group(1), "docs/predict_export.md:plain-pytorch", "exec"), namespace)

    expected = lightning_probs(trained.ckpt, preprocessed([trained.data / "images/0000.png"]))
    torch.testing.assert_close(namespace["probs"], expected)
    assert namespace["label"] == sorted(WORDS)[int(expected.argmax())]
    assert not isinstance(namespace["net"], LightningModule)


def test_export_that_misses_the_tolerance_fails_and_says_by_how_much(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A negative tolerance cannot be met, even by an exact export: the check must not pass
    # silently.
    assert export.main(["--ckpt_path", str(trained.ckpt), "--format", "torchscript",
                        "--output", str(tmp_path / "m.pt"), "--tolerance", "-1"]) == 1
    assert "more than the tolerance -1" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["test", "predict"])
def test_a_checkpoint_for_other_images_is_one_line_not_a_traceback(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], stage: str,
) -> None:
    # The run trained on gray digits; the same files read as RGB have 3 channels.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train.main([stage, *trained.args(), "--data.init_args.read_mode=RGB",
                    f"--ckpt_path={trained.ckpt}",
                    f"--data.init_args.predict_path={trained.predict_dir}"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("train.py: error: ImageClassifier does not take the data's samples "
                           "(one sample of shape (1, 3, 12, 12))"), line
