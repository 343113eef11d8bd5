"""Shared fixtures: tiny data made on the fly, and ways to run train.py in or out of process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The suite pins down CPU behaviour that a GPU would change or refuse: two gloo ranks on one
# machine, bit-identical weights across runs and resumes, exact gradients. So it runs on the CPU
# even where there is a GPU (hidden before torch looks for one); tests/test_gpu.py runs train.py
# in subprocesses that see the GPUs again.
VISIBLE_GPUS = os.environ.get("CUDA_VISIBLE_DEVICES")
os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default data set written once per test session (PNG files + labels.csv)."""
    from datamodules.digits import write_digits

    root = tmp_path_factory.mktemp("data") / "digits"
    write_digits(root)
    return root


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean working directory, so nothing a run writes lands in the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


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
    if VISIBLE_GPUS is None:
        del env["CUDA_VISIBLE_DEVICES"]
    else:
        env["CUDA_VISIBLE_DEVICES"] = VISIBLE_GPUS
    return env


def run_train_subprocess(
    args: list[str], cwd: Path, timeout: float = 300, extra_path: Path | None = None,
    gpu: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``python train.py ARGS`` as a user would, in its own process (needed for DDP, which
    re-executes the script per rank); on the CPU unless ``gpu``."""
    env = environment_with_gpus() if gpu else dict(os.environ)
    pythonpath = [str(REPO)] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join([*pythonpath, env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


# Runs in a fresh interpreter: imports train.py once, then forks one child per case. A child is
# a process of its own (its exit status, stdout, stderr and working directory), without paying
# the ~6 s of imports again.
_FORKING_LAUNCHER = """
import json, os, sys, traceback
cases, parallel = json.loads(sys.stdin.read())
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
        code = 1
        try:
            os.chdir(case["cwd"])
            for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv = [train.__file__, *case["args"]]
            train.main(case["args"])
            code = 0
        except SystemExit as stop:  # what the interpreter would do with it
            if isinstance(stop.code, str):
                sys.stderr.write(stop.code + "\\n")
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    running[pid] = name
while running:
    reap()
print(json.dumps(exit_codes))
"""


def run_train_forked(
    cases: dict[str, tuple[list[str], Path]], timeout: float = 600
) -> dict[str, subprocess.CompletedProcess[str]]:
    """``python train.py ARGS`` for many cases (name -> (ARGS, working directory)), each in a
    process of its own, side by side: forked from one interpreter that imported train.py, so
    the cases do not each spend the imports' seconds. For runs that fail or finish on their own
    (no DDP: that re-executes the script)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH",
                                                                                   "")]))
    spec = {name: {"args": args, "cwd": str(cwd), "stdout": str(cwd / ".train.stdout"),
                   "stderr": str(cwd / ".train.stderr")} for name, (args, cwd) in cases.items()}
    launcher = subprocess.run(
        [sys.executable, "-c", _FORKING_LAUNCHER], input=json.dumps([spec, os.cpu_count() or 2]),
        env=env, capture_output=True, text=True, timeout=timeout, check=True,
    )
    exit_codes = json.loads(launcher.stdout.splitlines()[-1])
    results = {}
    for name, case in spec.items():
        stdout, stderr = (Path(case[key]) for key in ("stdout", "stderr"))
        results[name] = subprocess.CompletedProcess(
            [sys.executable, str(REPO / "train.py"), *case["args"]], exit_codes[name],
            stdout.read_text(), stderr.read_text())
        stdout.unlink()
        stderr.unlink()
    return results
