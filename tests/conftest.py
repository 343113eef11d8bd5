"""Shared fixtures: tiny data made on the fly, and ways to run train.py in or out of process."""

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# The suite pins down CPU behaviour that a GPU would change or refuse: two gloo ranks on one
# machine, bit-identical weights across runs and resumes, exact gradients. So it runs on the CPU
# even where there is a GPU (hidden before torch looks for one); tests/test_gpu.py runs train.py
# in subprocesses that see the GPUs again. The user's setting is kept in the environment, so a
# second import of this module (or a subprocess) does not take the hidden value for it.
_UNSET = "<unset>"
os.environ.setdefault("TESTS_CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", _UNSET))
os.environ["CUDA_VISIBLE_DEVICES"] = ""
# The record of checked image files (datamodules.validation.CheckedFiles) goes to a folder of
# this session, for every process it starts, not to the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="template-tests-cache-")


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default data set written once per test session (PNG files + labels.csv)."""
    from datamodules.digits import write_digits

    root = tmp_path_factory.mktemp("data") / "digits"
    write_digits(root)
    return root


@contextlib.contextmanager
def log_lines(logger: str = "lightning.pytorch") -> Iterator[list[str]]:
    """The messages ``logger`` (and its children) emit inside the block; Lightning's loggers do
    not propagate to the root logger, so pytest's ``caplog`` does not see them."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(logger).addHandler(handler)
    try:
        yield lines
    finally:
        logging.getLogger(logger).removeHandler(handler)


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean working directory, so nothing a run writes lands in the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# The digits read from their PNG files per sample (no cache), each image randomly cropped and
# rotated in the loader: per-image random augmentation, with {workers} loader workers.
RANDOM_PER_IMAGE_CONFIG = """
data:
  init_args:
    cache_images: false
    num_workers: {workers}
    train_batch_transforms: null
    eval_batch_transforms: null
    train_transforms:
      class_path: torchvision.transforms.v2.Compose
      init_args:
        transforms:
          - class_path: torchvision.transforms.v2.RandomCrop
            init_args: {{size: 12, padding: 2}}
          - class_path: torchvision.transforms.v2.RandomRotation
            init_args: {{degrees: 15}}
          - class_path: torchvision.transforms.v2.ToDtype
            init_args: {{dtype: torch.float32, scale: true}}
    eval_transforms:
      class_path: torchvision.transforms.v2.Compose
      init_args:
        transforms:
          - class_path: torchvision.transforms.v2.Pad
            init_args: {{padding: 2}}
          - class_path: torchvision.transforms.v2.ToDtype
            init_args: {{dtype: torch.float32, scale: true}}
"""


def read_events(run: Path) -> Any:
    """A run folder's TensorBoard events (scalars, images, tensors), as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


# A user's own LightningModule, as a user would write it outside the project: its own metric
# names, lazy layers, num_classes in __init__, no test_step or predict_step (the README shows it).
MY_MODULE = '''
import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class MyModule(LightningModule):
    def __init__(self, num_classes: int, hidden: int = 32, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))
        self.val_acc = MulticlassAccuracy(num_classes)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val_acc", self.val_acc)

    def predict_step(self, batch, batch_idx):  # written to predictions.csv as it is
        return self(batch).softmax(dim=1)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
'''


def base_args(digits_root: Path, logs: Path) -> list[str]:
    """Options that point a run at the test's data and log folders."""
    return [
        f"--data.init_args.root={digits_root}",
        f"--trainer.logger.init_args.save_dir={logs}",
        f"--trainer.default_root_dir={logs}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def environment_with_gpus() -> dict[str, str]:
    """This process's environment with the GPUs visible again."""
    env = dict(os.environ)
    visible = env["TESTS_CUDA_VISIBLE_DEVICES"]
    if visible == _UNSET:
        del env["CUDA_VISIBLE_DEVICES"]
    else:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return env


def pythonpath_with(*paths: Path) -> str:
    """``PYTHONPATH`` with ``paths`` first. No empty entry: Python reads one as the working
    directory, which would make a test's folder importable."""
    entries = [str(p) for p in paths] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return os.pathsep.join(e for e in entries if e)


def run_train_subprocess(
    args: list[str], cwd: Path, timeout: float = 300, extra_path: Path | None = None,
    gpu: bool = False, env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python train.py ARGS`` as a user would, in its own process (needed for DDP, which
    re-executes the script per rank); on the CPU unless ``gpu``; in ``env`` if given."""
    env = dict(env) if env is not None else environment_with_gpus() if gpu else dict(os.environ)
    env["PYTHONPATH"] = pythonpath_with(REPO, *([extra_path] if extra_path else []))
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


def start_sweep(args: list[str], cwd: Path, extra_path: Path | None = None
                ) -> subprocess.Popen[str]:
    """Start ``python sweep.py ARGS`` as a user would (its own process; output captured)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath_with(REPO, *([extra_path] if extra_path else []))
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen([sys.executable, str(REPO / "sweep.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_module_subprocess(
    module: str, args: list[str], cwd: Path, extra_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` (e.g. ``models.export``) as a user would run it, on the CPU."""
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath_with(REPO, *([extra_path] if extra_path else []))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


# Runs in a fresh interpreter: imports train.py once, then forks one child per case, which runs
# train.py as ``__main__`` (the heavy imports come from the parent's memory) and exits the way
# ``python train.py`` would: uncaught exceptions and sys.exit are the interpreter's to handle.
_FORKING_LAUNCHER = """
import json, os, runpy, signal, sys
repo, cases, parallel, seconds = json.loads(sys.stdin.read())
sys.path[0] = repo  # where python train.py puts the script's folder ('' for -c)
import train
exit_codes, running = {}, {}

def reap():
    pid, status = os.wait()
    exit_codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)

for name, case in cases.items():
    while len(running) >= parallel:
        reap()
    pid = os.fork()
    if pid == 0:
        signal.alarm(seconds)  # a hung case ends (status -14) instead of blocking the others
        for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
            opened = os.open(path, os.O_WRONLY | os.O_TRUNC)
            os.dup2(opened, fd)
            os.close(opened)
        os.chdir(case["cwd"])
        sys.argv = [train.__file__, *case["args"]]
        runpy.run_path(train.__file__, run_name="__main__")
        sys.exit(0)
    running[pid] = name
while running:
    reap()
print(json.dumps(exit_codes))
"""


def run_train_forked(
    cases: dict[str, tuple[list[str], Path]], timeout: int = 300
) -> dict[str, subprocess.CompletedProcess[str]]:
    """``python train.py ARGS`` for many cases (name -> (ARGS, working directory)), each in a
    process of its own, side by side: forked from one interpreter that imported train.py, so
    the cases do not each spend the imports' seconds. ``timeout`` is per case. For runs that
    fail or finish on their own (no DDP: that re-executes the script)."""
    spec = {name: {"args": args, "cwd": str(cwd), "stdout": str(cwd / ".train.stdout"),
                   "stderr": str(cwd / ".train.stderr")} for name, (args, cwd) in cases.items()}
    for case in spec.values():
        Path(case["stdout"]).write_text("")
        Path(case["stderr"]).write_text("")
    parallel = os.cpu_count() or 2
    launcher = subprocess.run(
        [sys.executable, "-c", _FORKING_LAUNCHER],
        input=json.dumps([str(REPO), spec, parallel, timeout]), capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": pythonpath_with(REPO)}, check=False,
        timeout=timeout * (len(cases) // parallel + 2),
    )
    assert launcher.returncode == 0, launcher.stderr[-3000:]
    exit_codes = json.loads(launcher.stdout.splitlines()[-1])
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    for name, case in spec.items():
        stdout, stderr = Path(case["stdout"]), Path(case["stderr"])
        results[name] = subprocess.CompletedProcess(
            [sys.executable, str(REPO / "train.py"), *case["args"]], exit_codes[name],
            stdout.read_text(), stderr.read_text())
        stdout.unlink()
        stderr.unlink()
    return results


def run_check(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    """``train.py check ARGS`` in this process: the exit status and, per check in the table,
    (result, detail)."""
    import check
    import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["check", *args])
    rows = {}
    for line in capsys.readouterr().out.splitlines()[1:]:
        name, _, rest = line.partition(" ")
        if name in check.CHECKS:
            status, _, detail = rest.strip().partition(" ")
            rows[name] = (status, detail.strip().partition("s  ")[2])
    return int(exit_info.value.code), rows
