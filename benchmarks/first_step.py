"""Time to the first training step, stage by stage: the default run (``python train.py``) and a
user's folder (the 5,000 28x28 PNGs + CSV of ``benchmarks/user_folder.py``, its config).

    python benchmarks/first_step.py [--rounds 3] [--threads 2]

Each run is a fresh process running ``train.py`` unchanged, in a temporary folder, with a
clock added from outside: a callback on the command line (``--trainer.callbacks+=``) and timing
wrappers around the datamodule's ``prepare_data`` / ``setup`` / ``table_and_splits``. Stages, in
seconds:

- imports: from the process start (interpreter start-up included) to ``import train`` done;
- parse: LightningCLI building its parser, reading the configs, instantiating the classes, and
  the trainer's own set-up (strategy, logger), minus the data work below (the model's sizes
  pull the table in during instantiation);
- data: reading and checking the table and files, caching the images, ``prepare_data`` and
  ``setup`` (the default run: writing the digits on the first run only);
- sanity + optimizer: the validation sanity check and ``configure_optimizers``;
- first batch: the training loader's first batch;
- first step: its forward, backward and optimizer step.

The first run of each variant (digits written, every file checked) is reported apart from the
next runs (the data there, the record of checked files found unchanged), as a user meets them.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("imports", "parse", "data", "sanity + optimizer", "first batch", "first step")

# Run inside the child process: the clock, then train.py's own main().
CHILD = r"""
import functools, json, os, sys, time
start = float(os.environ["BENCH_START"])
marks = {}
import train
marks["imports"] = time.time()
from lightning.pytorch import Callback
from datamodules.base import TableDataModule
from datamodules.digits import DigitsDataModule

data_seconds = [0.0]
depth = [0]
def timed(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        depth[0] += 1
        began = time.time()
        try:
            return method(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                data_seconds[0] += time.time() - began
    return wrapper
for cls, name in [(TableDataModule, "table_and_splits"), (TableDataModule, "prepare_data"),
                  (TableDataModule, "setup"), (DigitsDataModule, "prepare_data")]:
    setattr(cls, name, timed(cls.__dict__[name]))

class Clock(Callback):
    def setup(self, trainer, pl_module, stage):
        marks.setdefault("setup", time.time())
    def on_train_start(self, trainer, pl_module):
        marks.setdefault("train_start", time.time())
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        marks.setdefault("batch", time.time())
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if "step" not in marks:
            marks["step"] = time.time()
            marks["data_seconds"] = data_seconds[0]
            json.dump(marks, open(os.environ["BENCH_CLOCK"], "w"))
            trainer.should_stop = True
sys.modules["bench_clock"] = sys.modules[__name__]
train.main([*sys.argv[1:], "--trainer.callbacks+=bench_clock.Clock"])
"""


def run_once(args: list[str], cwd: Path, threads: int) -> dict[str, float]:
    out = cwd / "clock.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "BENCH_CLOCK": str(out),
           "XDG_CACHE_HOME": str(cwd / "cache"),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "benchmarks")])}
    env["BENCH_START"] = str(time.time())
    done = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if done.returncode or not out.is_file():
        sys.exit(f"the run failed:\n{done.stderr[-3000:]}")
    m = json.loads(out.read_text())
    start, data = float(env["BENCH_START"]), m["data_seconds"]
    return {"imports": m["imports"] - start,
            "parse": m["setup"] - m["imports"] - data,
            "data": data,
            "sanity + optimizer": m["train_start"] - m["setup"],
            "first batch": m["batch"] - m["train_start"],
            "first step": m["step"] - m["batch"],
            "total": m["step"] - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from user_folder import BATCH, EPOCHS, MEAN, STD, USER_CONFIG, make_folder

    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        csv, _ = make_folder(workdir / "user")
        config = workdir / "user.yaml"
        config.write_text(USER_CONFIG.format(csv=csv, batch=BATCH, mean=MEAN, std=STD,
                                             epochs=EPOCHS))
        variants = {"default run (`python train.py`)": [],
                    "user folder (5,000 PNGs + CSV)": [f"--config={config}"]}
        first = {name: run_once(args, workdir, options.threads)
                 for name, args in variants.items()}
        later: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        for round_ in range(options.rounds):
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            for name in order:
                later[name].append(run_once(variants[name], workdir, options.threads))
    print(f"seconds per stage, {options.threads} threads; next runs: median of "
          f"{options.rounds} alternating rounds\n")
    print("| run | " + " | ".join(STAGES) + " | to first step done |")
    print("| --- |" + " ---: |" * (len(STAGES) + 1))
    for name in variants:
        rows = [("first run", first[name]),
                ("next runs", {k: statistics.median(r[k] for r in later[name])
                               for k in first[name]})]
        for label, values in rows:
            print(f"| {name}, {label} | " + " | ".join(f"{values[s]:.2f}" for s in STAGES)
                  + f" | {values['total']:.2f} |")


if __name__ == "__main__":
    main()
