"""What survives a crash, each case on the real ``train.py`` in its own process: kill -9 and an
exact resume, a kill while a checkpoint is written, a NaN loss, a failing DDP rank, bad inputs.

The failures are injected at exact steps by ``tests/reliability_hooks.py`` (no sleeps).
Resuming with a longer schedule than the checkpoint's is refused with advice:
``tests/test_train_cli.py::test_resume_with_a_longer_schedule_is_refused_with_advice``.
"""

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.conftest import (
    RANDOM_PER_IMAGE_CONFIG,
    REPO,
    base_args,
    pythonpath_with,
    run_train_forked,
    run_train_subprocess,
)

pytestmark = pytest.mark.reliability
HOOKS = "tests.reliability_hooks"

# 3 epochs of 4 steps, checkpointed every epoch; the default config otherwise (num_workers 0).
SHORT = ["--max_epochs=3", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2",
         "--trainer.limit_test_batches=2"]


def hook(name: str, **init_args: object) -> str:
    """``--trainer.callbacks+=`` with one of the injected failures and its arguments."""
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"{HOOKS}.{name}",
                                                 "init_args": init_args})


def only_run(logs: Path) -> Path:
    runs = sorted((logs / "digits").glob("version_*"))
    assert len(runs) == 1, runs
    return runs[0]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def output(result: object) -> str:
    return (result.stdout + result.stderr)[-4000:]  # type: ignore[attr-defined]


# -- 1. kill -9 mid-epoch, resumed exactly ---------------------------------------------------
@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_ends_with_the_uninterrupted_runs_exact_weights(
    tmp_path: Path, digits_root: Path
) -> None:
    reference_logs, crash_logs = tmp_path / "reference", tmp_path / "crash"
    reference = run_train_subprocess([*base_args(digits_root, reference_logs), *SHORT],
                                     cwd=tmp_path)
    assert reference.returncode == 0, output(reference)

    args = [*base_args(digits_root, crash_logs), *SHORT]
    killed = run_train_subprocess([*args, hook("SigkillAtStep", step=6)], cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, output(killed)  # step 6: epoch 2, batch 3
    run = only_run(crash_logs)
    assert load(run / "checkpoints" / "last.ckpt")["global_step"] == 4  # end of epoch 1

    resumed = run_train_subprocess([*args, "--ckpt_path=last"], cwd=tmp_path)

    assert resumed.returncode == 0, output(resumed)
    assert only_run(crash_logs) == run  # the same run folder, continued
    final = load(run / "checkpoints" / "last.ckpt")
    expected = load(only_run(reference_logs) / "checkpoints" / "last.ckpt")
    assert final["global_step"] == expected["global_step"] == 12
    assert_same_weights(final["state_dict"], expected["state_dict"])
    assert json.loads((run / "summary.json").read_text())["global_step"] == 12



# -- 1b. the same seed gives the same run with 0 or 2 loader workers --------------------------


@pytest.mark.slow
def test_same_seed_gives_the_same_weights_with_0_or_2_loader_workers(
    tmp_path: Path, digits_root: Path
) -> None:
    weights = []
    for workers in (0, 2):
        config = tmp_path / f"workers{workers}.yaml"
        config.write_text(RANDOM_PER_IMAGE_CONFIG.format(workers=workers))
        logs = tmp_path / f"logs{workers}"
        result = run_train_subprocess(
            [*base_args(digits_root, logs), f"--config={config}", "--max_epochs=2",
             "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=1",
             "--trainer.limit_test_batches=1"], cwd=tmp_path)
        assert result.returncode == 0, output(result)
        weights.append(load(only_run(logs) / "checkpoints" / "last.ckpt")["state_dict"])
    assert_same_weights(weights[0], weights[1])


# -- 2. a kill while a checkpoint is written leaves the previous one loadable -----------------
@pytest.mark.slow
def test_kill_9_while_writing_last_checkpoint_leaves_the_previous_one_loadable(
    tmp_path: Path, digits_root: Path
) -> None:
    logs = tmp_path / "logs"
    # Only last.ckpt is written (no best-of-k file), so the kill hits its write.
    args = [*base_args(digits_root, logs), *SHORT, "--max_epochs=2", "--checkpoint.monitor=null",
            "--checkpoint.save_top_k=0"]
    killed = run_train_subprocess([*args, hook("SigkillWhileSavingAtStep", step=8)],
                                  cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, output(killed)
    checkpoints = only_run(logs) / "checkpoints"
    assert load(checkpoints / "last.ckpt")["global_step"] == 4  # the previous one, whole
    # The new file was open for writing when the process died: under its temporary name.
    assert (checkpoints / ".last.ckpt.partial").is_file()

    resumed = run_train_subprocess([*args, "--ckpt_path=last"], cwd=tmp_path)

    assert resumed.returncode == 0, output(resumed)
    assert load(checkpoints / "last.ckpt")["global_step"] == 8
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]  # partial replaced


# -- 3. NaN loss -------------------------------------------------------------------------------
@pytest.mark.slow
def test_nan_loss_stops_with_the_step_keeps_the_last_good_checkpoint_and_exits_1(
    tmp_path: Path, digits_root: Path
) -> None:
    logs = tmp_path / "logs"
    result = run_train_subprocess(
        [*base_args(digits_root, logs), *SHORT, hook("NanInputsAtStep", step=6)], cwd=tmp_path)

    assert result.returncode == 1, output(result)
    error = result.stderr.rstrip().splitlines()[-1]
    assert error.startswith("train.py: error: training loss is nan at step 6 (epoch 1"), error
    assert "Traceback" not in result.stderr
    run = only_run(logs)
    last = load(run / "checkpoints" / "last.ckpt")  # loads: it is the end of epoch 1
    assert last["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert not (run / "summary.json").exists()  # nothing claims the run finished


# -- 4. one DDP rank fails ---------------------------------------------------------------------
def process_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize("rank", [1, 0])
def test_ddp_rank_failure_ends_the_job_fast_names_the_rank_and_leaves_no_process(
    tmp_path: Path, digits_root: Path, rank: int
) -> None:
    pids = tmp_path / "pids"
    started = time.monotonic()
    result = run_train_subprocess(
        [*base_args(digits_root, tmp_path / "logs"), *SHORT, "--devices=2",
         hook("RaiseOnRankAtStep", rank=rank, step=2, pid_dir=str(pids))],
        cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - started

    assert result.returncode != 0, output(result)
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end"
    first = next(line for line in result.stderr.splitlines() if " failed: " in line)
    assert first == f"train.py: rank {rank} failed: RuntimeError: simulated failure on rank {rank}"
    ranks = {p.stem: int(p.read_text()) for p in pids.glob("rank*.pid")}
    assert set(ranks) == {"rank0", "rank1"}
    alive = {rank: pid for rank, pid in ranks.items() if process_alive(pid)}
    assert not alive, f"still running: {alive}"


# -- 6. untrusted checkpoints load as tensors and plain types only ----------------------------
@pytest.mark.slow
def test_a_checkpoint_that_runs_code_when_unpickled_is_refused_by_every_command(
    tmp_path: Path, digits_root: Path
) -> None:
    # `test` and `validate` read --ckpt_path through the same LightningCLI load as resume.
    from tests.reliability_hooks import MakeDirWhenLoaded

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "x": MakeDirWhenLoaded(str(marker))},
               evil)
    train_args = base_args(digits_root, tmp_path / "logs")
    commands = {
        "resume": [str(REPO / "train.py"), *train_args, f"--ckpt_path={evil}"],
        "predict": [str(REPO / "train.py"), "predict", *train_args, f"--ckpt_path={evil}",
                    f"--data.init_args.predict_path={digits_root / 'images'}"],
        "export": ["-m", "models.export", f"--ckpt_path={evil}", "--format=torchscript"],
    }

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, check=False,
                              env={**os.environ, "PYTHONPATH": pythonpath_with(REPO)})

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(zip(commands, pool.map(run, commands.values()), strict=True))
    for name, result in results.items():
        assert result.returncode != 0, (name, output(result))
        assert "Weights only load failed" in result.stderr, (name, output(result))
    assert not marker.exists(), "unpickling ran the checkpoint's code"

# -- 5. bad inputs: refused before the first step, in one line, with no run left behind -------
def write_image_table(root: Path, image: Callable[[int], None] | None = None) -> Path:
    """12 gray 8x8 PNGs (labels a/b; 8 train, 2 val, 2 test) and ``labels.csv``; ``image(i)``
    may write image ``i`` differently."""
    from torchvision.io import write_png

    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(12):
        label = "ab"[i % 2]
        write_png(torch.full((1, 8, 8), 40 + 160 * (i % 2), dtype=torch.uint8),
                  str(root / f"images/{i}.png"))
        rows.append({"path": f"images/{i}.png", "label": label,
                     "split": "train" if i < 8 else "val" if i < 10 else "test"})
    if image is not None:
        for i in range(12):
            image(i)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def image_args(table: Path, read_mode: str = "GRAY") -> list[str]:
    return ["--data=datamodules.image_csv.ImageCSVDataModule", f"--data.annotations={table}",
            "--data.split_column=split", f"--data.read_mode={read_mode}",
            "--data.cache_images=false", "--data.num_workers=0", "--data.batch_size=4"]


def edit_table(table: Path, row: int, column: str, value: object) -> None:
    frame = pd.read_csv(table)
    frame.loc[row, column] = value
    frame.to_csv(table, index=False)


def missing_image(root: Path) -> list[str]:
    table = write_image_table(root)
    edit_table(table, 3, "path", "images/nope.png")
    return image_args(table)


def truncated_png(root: Path) -> list[str]:
    table = write_image_table(root)
    noise = torch.randint(0, 256, (1, 64, 64), dtype=torch.uint8, generator=torch.Generator())
    from torchvision.io import write_png

    write_png(noise, str(root / "images/3.png"))
    whole = (root / "images/3.png").read_bytes()
    (root / "images/3.png").write_bytes(whole[: len(whole) // 2])
    return image_args(table)


def text_named_png(root: Path) -> list[str]:
    table = write_image_table(root)
    (root / "images/3.png").write_text("this is not an image")
    return image_args(table)


def empty_csv(root: Path) -> list[str]:
    table = write_image_table(root)
    table.write_text("")
    return image_args(table)


def missing_label_column(root: Path) -> list[str]:
    table = write_image_table(root)
    pd.read_csv(table).drop(columns="label").to_csv(table, index=False)
    return image_args(table)


def unknown_test_label(root: Path) -> list[str]:
    table = write_image_table(root)
    edit_table(table, 11, "label", "zebra")  # a test row
    return image_args(table)


def feature_table_run(root: Path, frame: pd.DataFrame, in_features: int) -> list[str]:
    """A DataFrameDataModule config over ``frame`` (as features.csv) and an MLP."""
    frame.to_csv(root / "features.csv", index=False)
    config = {"model": {"init_args": {"backbone": {"class_path": "models.mlp.MLP",
                                                    "init_args": {"in_features": in_features}}}},
              "data": {"class_path": "datamodules.dataframe.DataFrameDataModule",
                       "init_args": {"data": str(root / "features.csv"), "num_workers": 0,
                                     "batch_size": 4, "train_batch_transforms": None,
                                     "eval_batch_transforms": None}}}
    (root / "features.yaml").write_text(json.dumps(config))
    return [f"--config={root / 'features.yaml'}"]


def two_features(nan_at: int | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"x1": np.linspace(0, 1, 12), "x2": np.arange(12.0),
                          "label": [i % 2 for i in range(12)]})
    if nan_at is not None:
        frame.loc[nan_at, "x1"] = np.nan
    return frame


def nan_feature(root: Path) -> list[str]:
    return feature_table_run(root, two_features(nan_at=5), in_features=2)


def mlp_wider_than_the_table(root: Path) -> list[str]:
    return feature_table_run(root, two_features(), in_features=5)


def path_escaping_root(root: Path) -> list[str]:
    table = write_image_table(root / "data")  # the image root is the table's folder
    (root / "secret.png").write_bytes((root / "data/images/0.png").read_bytes())
    edit_table(table, 3, "path", "../secret.png")  # a real image, outside the root
    return image_args(table)


def sixteen_bit_pngs(root: Path) -> list[str]:
    def write(i: int) -> None:
        Image.fromarray(np.full((8, 8), 8000 + 50000 * (i % 2), dtype=np.uint16)).save(
            root / f"images/{i}.png")

    return image_args(write_image_table(root, write))


def rgba_pngs(root: Path) -> list[str]:
    def write(i: int) -> None:
        pixel = (40, 90, 200, 128) if i % 2 else (200, 90, 40, 255)
        Image.fromarray(np.full((8, 8, 4), pixel, dtype=np.uint8), "RGBA").save(
            root / f"images/{i}.png")

    return [*image_args(write_image_table(root, write), read_mode="RGB"),
            "--model.init_args.backbone.init_args.in_channels=3"]


def decompression_bomb(root: Path) -> list[str]:
    table = write_image_table(root)
    Image.new("L", (1, 1)).save(root / "images/3.png")
    bomb = bytearray((root / "images/3.png").read_bytes())
    bomb[16:24] = (20000).to_bytes(4, "big") * 2  # the header claims 20000 x 20000 pixels
    bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")  # with a valid CRC
    (root / "images/3.png").write_bytes(bytes(bomb))
    return image_args(table)


def wrong_type_in_config(root: Path) -> list[str]:
    (root / "bad.yaml").write_text("data:\n  init_args:\n    batch_size: sixteen\n")
    return [f"--config={root / 'bad.yaml'}"]


# name: (what the run gets, what its one-line error must say; None: it must train)
BAD_INPUTS: dict[str, tuple[Callable[[Path], list[str]], list[str] | None]] = {
    "missing-image": (missing_image, ["labels.csv", "row 3: missing image file", "nope.png"]),
    "truncated-png": (truncated_png, ["labels.csv", "row 3: cannot decode", "3.png"]),
    "text-named-png": (text_named_png, ["labels.csv", "row 3: not an image file", "3.png"]),
    "empty-csv": (empty_csv, ["labels.csv", "the table has no rows"]),
    "missing-label-column": (missing_label_column, ["labels.csv", "missing column(s) ['label']"]),
    "unknown-test-label": (unknown_test_label,
                           ["labels.csv", "row 11: test label 'zebra' is not a training class"]),
    "nan-feature": (nan_feature, ["features.csv", "row 5: feature 'x1' is nan"]),
    "model-wider-than-table": (mlp_wider_than_the_table,
                               ["does not take the data's samples", "(1, 2)", "in_features"]),
    "path-escapes-root": (path_escaping_root,
                          ["labels.csv", "row 3: ", "secret.png is outside the image root"]),
    "16-bit-png": (sixteen_bit_pngs, None),
    "rgba-png": (rgba_pngs, None),
    "decompression-bomb": (decompression_bomb,
                           ["labels.csv", "row 3: ", "3.png is refused as a decompression bomb"]),
    "wrong-type-in-config": (wrong_type_in_config,
                             ['Parser key "data"', 'key "batch_size"', "int", "sixteen"]),
}
# Found by CheckModelTakesData when fit sets up, after Lightning created the run folder; every
# other case is refused before it exists.
FOUND_WHEN_FIT_SETS_UP = {"model-wider-than-table"}
TINY_FIT = ["--max_epochs=1", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1"]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory: pytest.TempPathFactory, digits_root: Path
                   ) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    """Every case as its own ``train.py`` process, side by side: name -> (result, logs)."""
    cases, logs = {}, {}
    for name, (make_args, _) in BAD_INPUTS.items():
        root = tmp_path_factory.mktemp(name)
        logs[name] = root / "logs"
        # The digits run's model and settings, then the case's own data (as a user's config
        # that starts from configs/digits.yaml).
        cases[name] = ([f"--config={REPO / 'configs' / 'digits.yaml'}",
                        *base_args(digits_root, logs[name]), *TINY_FIT, *make_args(root)], root)
    results = run_train_forked(cases)
    return {name: (results[name], logs[name]) for name in BAD_INPUTS}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_fails_before_training_in_one_line_or_trains_correctly(
    bad_input_runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]], name: str
) -> None:
    result, logs = bad_input_runs[name]
    expected = BAD_INPUTS[name][1]
    if expected is None:  # a format the pipeline converts: the run trains, tests and reports
        assert result.returncode == 0, output(result)
        (run,) = (logs / "digits").glob("version_*")
        summary = json.loads((run / "summary.json").read_text())
        assert summary["global_step"] == 2 and "test/acc" in summary["metrics"]
        return
    assert result.returncode == 2, output(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert result.stderr.rstrip().endswith(errors[0]), "the error is not the last, single line"
    for text in expected:
        assert text in errors[0], (text, errors[0])
    assert "Traceback" not in result.stderr
    left = [p for p in logs.rglob("*") if p.is_file()] if logs.exists() else []
    if name in FOUND_WHEN_FIT_SETS_UP:
        # Lightning has made the logger's folder: nothing in it looks like a finished run.
        left = [p for p in left if not p.name.startswith("events.out.tfevents.")]
    assert not left, f"a failed run left {left}"
