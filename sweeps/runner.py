"""Running a sweep's trials: ``jobs`` worker threads, each taking the next queued trial and
running it as ``python train.py fit ...`` processes (one per fold), until the queue is empty.

A trial is a process of its own, not a function call: DDP re-executes the script it runs in,
a crash or a leak stays in that process, and ``command.txt`` in its run folder reruns it by hand.
"""

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from sweeps.study import next_trial, requeue, requeue_stale_trials, suggest, worker_name
from sweeps.train_config import run_arguments

TRAIN = Path(__file__).resolve().parents[1] / "train.py"
# This many trials failing the same way before any completes stop the sweep: the cause is the
# data or the config, and every other trial would fail the same way.
GIVE_UP_AFTER = 3


class Sweep:
    """This process's part of a sweep: ``jobs`` worker threads, each taking the next queued
    trial and running it as train.py processes (one per fold), until the queue is empty."""

    def __init__(self, options: argparse.Namespace, train_args: list[str],
                 space: dict[str, BaseDistribution], config: dict[str, Any],
                 storage: optuna.storages.BaseStorage, study: optuna.Study) -> None:
        self.options, self.train_args, self.space = options, train_args, space
        self.config, self.storage, self.study = config, storage, study
        self.folder: Path = options.folder
        self.monitor = config["checkpoint"]["monitor"]
        self.stopping = threading.Event()
        self.children: set[subprocess.Popen] = set()
        self.lock = threading.RLock()  # a second Ctrl+C may come while stop() holds it
        self.stopped_by: int | None = None
        self.completed = 0  # trials that completed in this process
        self.failures: list[str] = []  # why each trial of this process failed
        self.gave_up: str | None = None  # the failure that stopped the sweep
        self.gpus = gpu_slots(options.jobs)
        self.study_id = storage.get_study_id_from_name(study.study_name)

    # -- workers ------------------------------------------------------------------------------
    def run(self) -> None:
        requeue_stale_trials(self.study, self.storage)
        workers = [threading.Thread(target=self.worker, args=(slot,), daemon=True)
                   for slot in range(self.options.jobs)]
        for worker in workers:
            worker.start()
            time.sleep(0.5)  # staggered: the workers' first samples see each other's trials
        for worker in workers:
            while worker.is_alive():  # short joins: signals reach the main thread meanwhile
                worker.join(timeout=0.5)

    def worker(self, slot: int) -> None:
        while not self.stopping.is_set():
            trial = next_trial(self.study, self.storage)
            if trial is None:
                return
            try:
                self.run_trial(trial, slot)
            except Exception as error:  # one trial's problem (a full disk, a
                # storage hiccup) fails that trial; the sweep goes on with the next one.
                print(f"trial {trial.number}: sweep.py error: {error!r}", flush=True)
                with contextlib.suppress(Exception):  # unless the trial had already ended
                    self.fail(trial, f"sweep.py: {type(error).__name__}: {error}")

    def stop(self, signum: int | None, frame: Any) -> None:
        """Ctrl+C or SIGTERM (or trials failing the same way): stop every running trial
        (train.py saves its last.ckpt); they are queued again for the next run."""
        if signum is not None:
            self.stopped_by = signum
        self.stopping.set()
        with self.lock:
            for child in self.children:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGTERM)

    # -- one trial ----------------------------------------------------------------------------
    def run_trial(self, trial: optuna.Trial, slot: int = 0) -> None:
        trial.set_user_attr("worker", worker_name())
        params = {name: suggest(trial, name, dist) for name, dist in self.space.items()}
        started = time.perf_counter()
        folds = self.options.folds
        scores, metrics = [], []
        for fold in range(folds or 1):
            run = f"trial_{trial.number:04d}" + (f"/fold_{fold}" if folds else "")
            if fold == 0:
                trial.set_user_attr("run_folder", str(self.folder / run.split("/")[0]))
            returncode, last_line = self.train(trial.number, params, fold if folds else None,
                                               slot)
            if returncode != 0 and self.stopping.is_set():
                requeue(self.study, self.storage, trial.number, params,
                        "the sweep was stopped during it")
                return
            if returncode != 0:
                self.fail(trial, last_line or f"train.py exit status {returncode}", run)
                return
            # Written by the run's OptunaPruning callback: read from the storage, not from the
            # Trial object (it caches what this process has written).
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id,
                                                                            trial.number)
            pruned_at = self.storage.get_trial(trial_id).user_attrs.get("pruned_at_epoch")
            if pruned_at is not None:
                self.study.tell(trial, state=TrialState.PRUNED)
                self.say(trial, "pruned", started, params, f"after epoch {pruned_at}"
                         + (f" of fold {fold}" if folds else ""))
                return
            if not (self.folder / run / "summary.json").is_file():
                self.fail(trial, "the run wrote no summary.json (is callbacks.run_summary."
                                 "RunSummary still in trainer.callbacks?)", run)
                return
            summary = json.loads((self.folder / run / "summary.json").read_text())
            if summary.get("best_score") is None:
                logged = ", ".join(summary.get("metrics") or {}) or "none"
                self.fail(trial, f"the run logged no {self.monitor!r}, the sweep's objective "
                                 f"(its metrics: {logged}); set --checkpoint.monitor and "
                                 "--checkpoint.mode", run)
                return
            scores.append(summary["best_score"])
            metrics.append(summary.get("best_epoch_metrics") or {})
        trial.set_user_attr("metrics", mean_and_std(metrics))
        if folds:
            trial.set_user_attr("fold_metrics", metrics)
        self.study.tell(trial, sum(scores) / len(scores))
        self.completed += 1
        self.say(trial, "complete", started, params,
                 f"{self.monitor} {sum(scores) / len(scores):.4f}" + (
                     f" (mean of {folds} folds)" if folds else ""))

    def train(self, number: int, params: dict[str, Any], fold: int | None,
              slot: int) -> tuple[int, str]:
        """Run train.py for one trial (fold); its output goes to train.log in the run folder.
        Returns the exit status and the line that says why it failed."""
        args = run_arguments(self.options, self.train_args, params, number, fold, self.monitor)
        command = [sys.executable, str(TRAIN), "fit", *args]
        run_dir = self.folder / (f"trial_{number:04d}" + (f"/fold_{fold}" if fold is not None
                                                          else ""))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "command.txt").write_text("python " + shlex.join(command[1:]) + "\n")
        (run_dir / "trial.json").write_text(json.dumps(
            {"study": self.study.study_name, "trial": number, "fold": fold, "params": params},
            indent=2) + "\n")
        with open(run_dir / "train.log", "w") as log, self.lock:
            if self.stopping.is_set():
                return 143, ""
            # PR_SET_PDEATHSIG (die_with_parent) fires when the thread that started the child
            # ends: this worker thread waits for the child, so only the process's death does.
            # The function runs between fork and exec and only calls prctl, which is why a
            # preexec_fn is safe enough beside the other worker threads.
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                     env=self.trial_environment(slot), start_new_session=True,
                                     preexec_fn=die_with_parent)
            self.children.add(child)
        returncode = child.wait()
        with self.lock:
            self.children.discard(child)
        return returncode, failure_reason((run_dir / "train.log").read_text(errors="replace"))

    def trial_environment(self, slot: int) -> dict[str, str]:
        """With ``--jobs N``, each trial's torch gets 1/N of the CPUs for its threads (torch
        takes them all by default, and N trials would fight over them), unless the user set
        OMP_NUM_THREADS; with at least N GPUs, each worker slot its own share of them."""
        env = dict(os.environ)
        if self.options.jobs > 1 and "OMP_NUM_THREADS" not in env:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
                os.cpu_count() or 1)
            env["OMP_NUM_THREADS"] = str(max(1, cpus // self.options.jobs))
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus[slot])
        return env

    # -- ends ---------------------------------------------------------------------------------
    def fail(self, trial: optuna.Trial, why: str, run: str = "") -> None:
        trial.set_user_attr("error", why)
        self.study.tell(trial, state=TrialState.FAIL)
        log = f" (see {self.folder / run / 'train.log'})" if run else ""
        self.say(trial, "failed", None, trial.params, why + log)
        with self.lock:
            self.failures.append(why)
            same = self.failures[:GIVE_UP_AFTER]
            if (not self.completed and self.gave_up is None and len(same) == GIVE_UP_AFTER
                    and len(set(same)) == 1):
                self.gave_up = why
                self.stop(None, None)

    def say(self, trial: optuna.Trial, state: str, started: float | None,
            params: dict[str, Any], detail: str) -> None:
        took = f" in {time.perf_counter() - started:.0f} s" if started is not None else ""
        values = ", ".join(f"{label}={short(value)}"
                           for label, value in zip(short_names(params), params.values(),
                                                   strict=True))
        print(f"trial {trial.number} {state}{took}: {detail}" + (f"  [{values}]" if values else ""),
              flush=True)


def short(value: Any) -> str:
    """A value as tables show it: floats to 4 digits, class paths by their class name, JSON
    (a mapping or list choice) as it is, cut at 40 characters."""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    if text[:1] in "{[":
        return text if len(text) <= 40 else text[:37] + "..."
    if "." in text and " " not in text and not text.replace(".", "").lstrip("-").isdigit():
        return text.rpartition(".")[2]
    return text


def short_names(names: Any) -> list[str]:
    """The shortest dotted suffix of each option name that tells it apart from the others
    (``lr``, but ``optimizer.init_args.lr`` and ``scheduler.init_args.lr`` when both)."""
    names = list(names)
    parts = [name.split(".") for name in names]
    labels = []
    for mine in parts:
        for k in range(1, len(mine) + 1):
            label = ".".join(mine[-k:])
            if sum(".".join(other[-k:]) == label for other in parts) == 1:
                break
        labels.append(label)
    return labels


def failure_reason(log: str) -> str:
    """Why a train.py run failed, from its output: its one-line ``train.py: error:``, else the
    last line of a traceback (``SomethingError: ...``), else its last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("train.py: error:") or line.startswith("train.py: rank"):
            return line
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b.*", line):
            return line
    return lines[-1] if lines else ""


def gpu_slots(jobs: int) -> list[list[str]]:
    """The GPUs of each worker slot: with ``jobs`` workers and at least as many visible GPUs,
    each slot gets its own share; otherwise no split (trials see every GPU)."""
    if jobs < 2:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [gpu for gpu in visible.split(",") if gpu.strip()]
    else:
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
    if len(gpus) < jobs:
        if gpus:
            print(f"--jobs {jobs} with {len(gpus)} GPU(s): the trials share them", flush=True)
        return []
    share = len(gpus) // jobs
    return [gpus[slot * share:(slot + 1) * share] for slot in range(jobs)]


def mean_and_std(runs: list[dict[str, float]]) -> dict[str, list[float]]:
    """Each metric's mean and (sample) standard deviation over the folds; std 0 for one run."""
    names = [name for name in runs[0] if all(name in run for run in runs)] if runs else []
    result = {}
    for name in names:
        values = [float(run[name]) for run in runs]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        result[name] = [mean, var ** 0.5]
    return result


def die_with_parent() -> None:
    """In a trial's process, before train.py starts (Linux): SIGTERM when the sweep process dies,
    even by SIGKILL, so that a killed sweep leaves no orphan training (train.py saves last.ckpt
    on SIGTERM and stops its DDP ranks)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None).prctl  # looked up here: after fork only the call itself runs


_PRCTL = _load_prctl()
