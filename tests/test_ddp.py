"""Real multi-process DDP on CPU (gloo): train.py is re-executed per rank, as on a GPU node."""

import json
from pathlib import Path

import pytest

from tests.conftest import base_args, run_train_subprocess

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def test_devices_2_launches_two_ranks_that_finish_with_one_checkpoint_and_summary(
    tmp_path: Path, digits_root: Path
) -> None:
    logs = tmp_path / "logs"
    result = run_train_subprocess(
        [*base_args(digits_root, logs), "--devices", "2", "--max_epochs", "1",
         "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
         "--trainer.limit_test_batches=2"],
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # Lightning prints this once per process it initialises.
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in output
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert output.count("Run summary") == 1  # only rank 0 reports
    runs = list((logs / "digits").glob("version_*"))
    assert len(runs) == 1, runs  # one run folder, not one per rank
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["strategy"] == "DDPStrategy"
    assert summary["global_step"] == 3  # each rank took the 3 batches of its shard
    assert Path(summary["best_checkpoint"]).is_file()
    assert (runs[0] / "checkpoints" / "last.ckpt").is_file()
    assert "test/acc" in summary["metrics"]
