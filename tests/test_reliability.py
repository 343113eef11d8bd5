"""What survives a crash, each case on the real ``train.py`` in its own process: kill -9 and an
exact resume, a kill while a checkpoint is written, a NaN loss, a failing DDP rank, bad inputs.

The failures are injected at exact steps by ``tests/reliability_hooks.py`` (no sleeps).
Resuming with a longer schedule than the checkpoint's is refused with advice:
``tests/test_train_cli.py::test_resume_with_a_longer_schedule_is_refused_with_advice``.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import base_args, run_train_subprocess

pytestmark = pytest.mark.reliability
HOOKS = "tests.reliability_hooks"

# 3 epochs of 4 steps, checkpointed every epoch; the default config otherwise (num_workers 0).
SHORT = ["--max_epochs=3", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2",
         "--trainer.limit_test_batches=2", "--trainer.num_sanity_val_steps=2"]


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
