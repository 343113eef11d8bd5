"""train.py on a CUDA GPU, and a GPU-trained checkpoint used where there is none. Skipped
without a GPU (the rest of the suite runs on the CPU everywhere, see conftest.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, base_args, environment_with_gpus, run_train_subprocess

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

ON_GPU = "GPU available: True (cuda), used: True"


@pytest.fixture(scope="module", autouse=True)
def needs_a_gpu() -> None:
    """Asked in a subprocess: this process hides the GPUs before torch looks for them."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                           env=environment_with_gpus(), capture_output=True, text=True,
                           check=False, timeout=120)
    if probe.returncode != 0 or int(probe.stdout.strip() or 0) < 1:
        pytest.skip("no CUDA GPU")


def summary_of(logs: Path, name: str = "digits") -> dict:
    (summary_file,) = (logs / name).glob("version_*/summary.json")
    return json.loads(summary_file.read_text())


def test_default_run_trains_on_the_gpu_and_its_checkpoint_predicts_and_exports_on_the_cpu(
    tmp_path: Path, digits_root: Path
) -> None:
    logs = tmp_path / "logs"
    result = run_train_subprocess(base_args(digits_root, logs), cwd=tmp_path, gpu=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert ON_GPU in output
    summary = summary_of(logs)
    assert summary["metrics"]["test/acc"] >= 0.98, summary["metrics"]

    # The checkpoint holds CUDA tensors; predict and export run where no GPU is visible.
    predictions = tmp_path / "predictions.csv"
    result = run_train_subprocess(
        ["predict", *base_args(digits_root, logs), f"--ckpt_path={summary['best_checkpoint']}",
         f"--data.init_args.predict_path={digits_root / 'images'}",
         f"--trainer.callbacks.init_args.output_path={predictions}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "GPU available: False" in output
    assert len(predictions.read_text().splitlines()) == 1 + 1797
    exported = subprocess.run(
        [sys.executable, "-m", "models.export", f"--ckpt_path={summary['best_checkpoint']}",
         "--format=onnx", f"--output={tmp_path / 'model.onnx'}"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=300)
    assert exported.returncode == 0, (exported.stdout + exported.stderr)[-4000:]
    assert "Parity: max |output difference|" in exported.stdout
