"""Exact resume from inside an epoch, each case on the real ``train.py`` in its own processes:
a run killed (SIGKILL, SIGTERM, SLURM's SIGUSR1 then SIGKILL) in the middle of epoch 2 and
resumed ends with the weights of a run that was never interrupted, bit for bit (CPU, fixed
seed). Also: DDP, a changed number of processes, other data, a validation cut short.

Every run: 3 epochs of 6 steps, ``last.ckpt`` rewritten every 4 steps; a kill before step 10
(epoch 2 is steps 6-11) leaves the step-8 ``last.ckpt``, two batches into the epoch.
"""

import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.conftest import (
    RANDOM_PER_IMAGE_CONFIG,
    REPO,
    base_args,
    read_events,
    run_train_subprocess,
)
from tests.test_reliability import assert_same_weights, hook, load, only_run, output

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

RUN = ["--max_epochs=3", "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=2",
       "--trainer.limit_test_batches=1", "--checkpoint.every_n_train_steps=4"]
TWO_WORKERS = ["--data.init_args.num_workers=2"]


def per_image_augmentation(folder: Path, workers: int) -> list[str]:
    config = folder / f"random_per_image_{workers}.yaml"
    config.write_text(RANDOM_PER_IMAGE_CONFIG.format(workers=workers))
    return [f"--config={config}"]


def last_checkpoint(logs: Path) -> Path:
    return only_run(logs) / "checkpoints" / "last.ckpt"


def data_state(checkpoint: dict) -> dict:
    return checkpoint["DigitsDataModule"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, digits_root: Path
                  ) -> Callable[[list[str]], Path]:
    """The ``last.ckpt`` of a run never interrupted, per set of options (run once each)."""
    done: dict[tuple[str, ...], Path] = {}

    def run(args: list[str]) -> Path:
        if tuple(args) not in done:
            folder = tmp_path_factory.mktemp("uninterrupted")
            result = run_train_subprocess([*base_args(digits_root, folder / "logs"), *RUN, *args],
                                          cwd=folder)
            assert result.returncode == 0, output(result)
            done[tuple(args)] = last_checkpoint(folder / "logs")
        return done[tuple(args)]

    return run


def interrupted_and_uninterrupted(
    uninterrupted: Callable[[list[str]], Path], options: list[str], args: list[str],
    first: list[str], cwd: Path, env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``train.py ARGS FIRST`` (the run to interrupt) and the uninterrupted reference with the
    same ``options``, side by side (two cores)."""
    with ThreadPoolExecutor(2) as pool:
        reference = pool.submit(uninterrupted, options)
        interrupted = run_train_subprocess([*args, *first], cwd=cwd, env=env)
        return interrupted, reference.result()


CASES = {
    "digits cached, random sampler, 0 workers": lambda folder: [],
    "digits cached, random sampler, 2 workers": lambda folder: TWO_WORKERS,
    "image files, per-image random augmentation, 2 workers":
        lambda folder: per_image_augmentation(folder, workers=2),
    "weighted sampler, 2 workers": lambda folder: ["--data.init_args.sampler=weighted",
                                                   *TWO_WORKERS],
    "subset_random sampler, 0 workers": lambda folder: ["--data.init_args.sampler=subset_random",
                                                        "--data.init_args.subset_fraction=0.5"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_kill_9_inside_an_epoch_then_resume_ends_with_the_uninterrupted_runs_exact_weights(
    tmp_path: Path, digits_root: Path, uninterrupted: Callable[[list[str]], Path], case: str
) -> None:
    options = CASES[case](tmp_path)
    logs = tmp_path / "logs"
    args = [*base_args(digits_root, logs), *RUN, *options]
    killed, reference = interrupted_and_uninterrupted(
        uninterrupted, options, args, [hook("SigkillAtStep", step=10)], tmp_path)
    assert killed.returncode == -signal.SIGKILL, output(killed)
    saved = load(last_checkpoint(logs))
    assert saved["global_step"] == 8 and data_state(saved)["inside_epoch"]

    resumed = run_train_subprocess([*args, "--ckpt_path=last"], cwd=tmp_path)

    assert resumed.returncode == 0, output(resumed)
    assert "not resumable" not in resumed.stderr  # Lightning's warning for a plain DataLoader
    final, expected = load(last_checkpoint(logs)), load(reference)
    assert final["global_step"] == expected["global_step"] == 18
    assert_same_weights(final["state_dict"], expected["state_dict"])


def test_sigterm_inside_an_epoch_exits_143_refuses_other_data_and_resumes_exactly(
    tmp_path: Path, digits_root: Path, uninterrupted: Callable[[list[str]], Path]
) -> None:
    logs = tmp_path / "logs"
    args = [*base_args(digits_root, logs), *RUN, *TWO_WORKERS]
    stopped, reference = interrupted_and_uninterrupted(
        uninterrupted, TWO_WORKERS, args,
        [hook("SignalAtStep", signal_name="SIGTERM", step=9)], tmp_path)
    assert stopped.returncode == 143, output(stopped)
    checkpoint = last_checkpoint(logs)
    assert load(checkpoint)["global_step"] == 10  # step 9 finished, then the save
    before = hashlib.sha256(checkpoint.read_bytes()).hexdigest()

    # Bad input: a checkpoint from another sampler; another batch size or seed inside an epoch.
    for option, change in [("--data.init_args.sampler=weighted", "sampler 'random' -> 'weighted'"),
                           ("--data.init_args.batch_size=8", "batch_size 16 -> 8"),
                           ("--seed_everything=1", "seed 0 -> 1")]:
        refused = run_train_subprocess([*args, "--ckpt_path=last", option], cwd=tmp_path)
        assert refused.returncode == 2, output(refused)
        errors = [line for line in refused.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and change in errors[0], output(refused)
        assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == before

    resumed = run_train_subprocess([*args, "--ckpt_path=last"], cwd=tmp_path)

    assert resumed.returncode == 0, output(resumed)
    assert_same_weights(load(checkpoint)["state_dict"], load(reference)["state_dict"])


def test_slurm_signal_saves_hpc_checkpoint_at_the_steps_end_and_the_requeued_job_resumes_exactly(
    tmp_path: Path, digits_root: Path, uninterrupted: Callable[[list[str]], Path]
) -> None:
    """SIGUSR1 arrives at the start of step 9 (SLURM sends it at any moment); SLURM kills the job
    two steps later. The requeued job (the same command) resumes from ``hpc_ckpt_1.ckpt``."""
    bin_dir = tmp_path / "bin"  # SLURM's scontrol: records the requeue request
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.calls\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_NODELIST": "localhost",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    logs = tmp_path / "logs"
    # The requeue callback is an option: the config configs/slurm/train.sbatch loads.
    args = [*base_args(digits_root, logs), f"--config={REPO / 'configs/slurm/requeue.yaml'}",
            *RUN, *TWO_WORKERS]
    killed, reference = interrupted_and_uninterrupted(
        uninterrupted, TWO_WORKERS, args,
        [hook("SignalAtStep", signal_name="SIGUSR1", step=9), hook("SigkillAtStep", step=11)],
        tmp_path, env=env)
    assert killed.returncode == -signal.SIGKILL, output(killed)
    assert load(logs / "hpc_ckpt_1.ckpt")["global_step"] == 10  # at the end of step 9
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "4242"]

    requeued = run_train_subprocess(args, cwd=tmp_path, env=env)

    assert requeued.returncode == 0, output(requeued)
    assert "hpc_ckpt_1.ckpt" in requeued.stdout + requeued.stderr
    newest = sorted((logs / "digits").glob("version_*"))[-1] / "checkpoints" / "last.ckpt"
    assert_same_weights(load(newest)["state_dict"], load(reference)["state_dict"])


@pytest.mark.ddp
def test_ddp_kill_9_inside_an_epoch_refuses_one_process_and_resumes_exactly_on_both_ranks(
    tmp_path: Path, digits_root: Path, uninterrupted: Callable[[list[str]], Path]
) -> None:
    logs = tmp_path / "logs"
    ddp = ["--devices=2"]
    args = [*base_args(digits_root, logs), *RUN, *ddp]
    weights_of = {name: tmp_path / name for name in ("reference", "resumed")}
    with ThreadPoolExecutor(2) as pool:
        reference = pool.submit(
            run_train_subprocess,
            [*base_args(digits_root, tmp_path / "reference_logs"), *RUN, *ddp,
             hook("SaveWeightsAtTrainEnd", folder=str(weights_of["reference"]))], tmp_path)
        killed = run_train_subprocess([*args, hook("SigkillAtStep", step=10)], cwd=tmp_path)
        assert reference.result().returncode == 0, output(reference.result())
    assert killed.returncode == -signal.SIGKILL, output(killed)
    checkpoint = last_checkpoint(logs)
    assert load(checkpoint)["global_step"] == 8

    one_process = run_train_subprocess(
        [*base_args(digits_root, logs), *RUN, "--ckpt_path=last"], cwd=tmp_path)
    assert one_process.returncode == 2, output(one_process)
    assert "processes 2 -> 1" in one_process.stderr, output(one_process)
    assert load(checkpoint)["global_step"] == 8  # refused before any step

    resumed = run_train_subprocess(
        [*args, "--ckpt_path=last", hook("SaveWeightsAtTrainEnd",
                                         folder=str(weights_of["resumed"]))], cwd=tmp_path)

    assert resumed.returncode == 0, output(resumed)
    for rank in (0, 1):
        assert_same_weights(
            torch.load(weights_of["resumed"] / f"rank{rank}.pt", weights_only=True),
            torch.load(weights_of["reference"] / f"rank{rank}.pt", weights_only=True))


def test_ctrl_c_during_validation_keeps_the_checkpoint_before_it_and_the_resume_validates_whole(
    tmp_path: Path, digits_root: Path, uninterrupted: Callable[[list[str]], Path]
) -> None:
    """Ctrl+C in the middle of epoch 2's validation (after step 12): no half-validated state is
    saved; the resume from step 8 trains to step 12 again and runs that validation whole."""
    logs = tmp_path / "logs"
    args = [*base_args(digits_root, logs), *RUN, "--trainer.limit_val_batches=4"]
    interrupted, reference = interrupted_and_uninterrupted(
        uninterrupted, ["--trainer.limit_val_batches=4"], args,
        [hook("SignalAtValidationBatch", signal_name="SIGINT", step=12, batch=2)], tmp_path)
    assert interrupted.returncode != 0, output(interrupted)
    assert "during validation: not saving" in interrupted.stdout + interrupted.stderr
    assert load(last_checkpoint(logs))["global_step"] == 8

    resumed = run_train_subprocess([*args, "--ckpt_path=last"], cwd=tmp_path)

    assert resumed.returncode == 0, output(resumed)
    assert_same_weights(load(last_checkpoint(logs))["state_dict"], load(reference)["state_dict"])

    def validation_losses(run: Path) -> dict[int, float]:  # step -> val/loss, last one wins
        return {e.step: e.value for e in read_events(run).Scalars("val/loss")}

    assert validation_losses(only_run(logs)) == validation_losses(reference.parent.parent)
    summary = json.loads((only_run(logs) / "summary.json").read_text())
    expected = json.loads((reference.parent.parent / "summary.json").read_text())
    assert summary["best_epoch_metrics"] == expected["best_epoch_metrics"]


def test_step_checkpoints_rewrite_last_only_and_best_files_follow_validation(
    tmp_path: Path, digits_root: Path, uninterrupted: Callable[[list[str]], Path]
) -> None:
    """``every_n_train_steps`` writes no best-by-metric file between validations (Lightning
    would, scored by the previous validation's metric), and a time interval of 0 rewrites
    ``last.ckpt`` after every step."""
    run = uninterrupted([]).parent.parent
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(names) == 2 and names[1] == "last.ckpt", names
    best_loss = float(names[0].removesuffix(".ckpt").partition("loss")[2])
    losses = [e.value for e in read_events(run).Scalars("val/loss")]
    assert best_loss == pytest.approx(min(losses), abs=1e-4)

    logs = tmp_path / "logs"
    killed = run_train_subprocess(
        [*base_args(digits_root, logs), *RUN, "--checkpoint.every_n_train_steps=null",
         "--checkpoint.train_time_interval=0:00:00", hook("SigkillAtStep", step=3)], cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, output(killed)
    assert load(last_checkpoint(logs))["global_step"] == 3


def test_ctrl_c_in_an_epochs_last_batch_saves_a_checkpoint_inside_that_epoch(
    tmp_path: Path, digits_root: Path
) -> None:
    # Epoch 1 is steps 0-5: Ctrl+C as step 5 starts, its batch already fetched, not trained.
    logs = tmp_path / "logs"
    args = [*base_args(digits_root, logs), *RUN]
    run_train_subprocess([*args, hook("SignalAtStep", signal_name="SIGINT", step=5)],
                         cwd=tmp_path)
    saved = load(last_checkpoint(logs))
    assert saved["global_step"] == 5 and data_state(saved)["inside_epoch"]

    refused = run_train_subprocess([*args, "--ckpt_path=last", "--data.init_args.batch_size=8"],
                                   cwd=tmp_path)
    assert refused.returncode == 2 and "batch_size 16 -> 8" in refused.stderr, output(refused)
