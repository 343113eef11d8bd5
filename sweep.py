"""Hyperparameter sweeps and k-fold cross-validation over train.py's own configs, with Optuna.

    python sweep.py --search configs/search/digits.yaml --trials 20     # a sweep of the default run
    python sweep.py --search configs/search/digits.yaml --trials 20 --jobs 2   # two at a time
    python sweep.py --folds 5                           # 5-fold cross-validation of the default run
    python sweep.py --config configs/x.yaml --devices 2 --search S.yaml --folds 3   # all together
    python sweep.py --search S.yaml --storage postgresql://user@host/db   # on several machines

Every option sweep.py does not know is train.py's (``--config``, ``--devices``, dotted options),
so a sweep runs exactly the configs train.py runs. Each trial is ``python train.py fit <those
options> <the trial's values>`` in its own process (DDP inside it works), logging to
``<dir>/<name>/trial_NNNN`` (``.../fold_K`` with ``--folds``): config.yaml, checkpoints,
summary.json and the process's output in train.log. The objective is the checkpoint's monitor
(``--checkpoint.monitor`` / ``--checkpoint.mode``; val/loss, lowest, by default): the value of the
best epoch, averaged over the folds. Trials never run the test split.

The study lives in ``<dir>/<name>/study.journal`` (or ``--storage``): the same command again,
after a crash or on another machine, continues it. The planned trials are queued in the
study when it is created, and each worker takes the next one, so the count is exact whatever
the number of workers. At the end: a table, ``best_config.yaml`` (``python train.py --config
best_config.yaml`` trains the best trial's settings), ``trials.csv`` and plots.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from configs.search_space import SearchSpaceError, command_line_value, load_search_space

ROOT = Path(__file__).resolve().parent
TRAIN = ROOT / "train.py"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class SweepError(Exception):
    """Bad options or search space: reported in one line, exit 2, before anything is written."""


# -- options ---------------------------------------------------------------------------------
def parse_options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], allow_abbrev=False,
        epilog="All other options go to every train.py run (python train.py --help).")
    parser.add_argument("--search", type=Path, help="search space YAML (configs/search/)")
    parser.add_argument("--trials", type=int, default=None,
                        help="trials the study runs in all, over every worker (default 20; "
                             "1 without --search)")
    parser.add_argument("--folds", type=int, default=None,
                        help="k-fold cross-validation of each trial on the training data")
    parser.add_argument("--jobs", type=int, default=1, help="trials run at once by this process")
    parser.add_argument("--name", help="study name and folder (default: the search file's name, "
                                       "or cv<K>)")
    parser.add_argument("--dir", type=Path, default=Path("logs/sweeps"),
                        help="where the study folder goes (default logs/sweeps)")
    parser.add_argument("--storage", help="Optuna storage URL shared by several machines "
                                          "(postgresql://...); default: a journal file in the "
                                          "study folder")
    parser.add_argument("--pruner", choices=("median", "none"), default="median",
                        help="stop trials whose metric is worse than the median at that epoch")
    parser.add_argument("--startup_trials", type=int, default=5,
                        help="trials that finish before the pruner stops any (default 5)")
    parser.add_argument("--warmup_epochs", type=int, default=1,
                        help="epochs of each trial (fold) never pruned (default 1)")
    parser.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    parser.add_argument("--sampler_seed", type=int, default=None)
    options, train_args = parser.parse_known_args(argv)
    if train_args and train_args[0] in ("fit", "validate", "test", "predict"):
        raise SweepError(f"sweep.py runs train.py fit itself; drop {train_args[0]!r}")
    if options.search is None and options.folds is None:
        raise SweepError("nothing to do: give --search (a sweep) and/or --folds (cross-validation)")
    if options.folds is not None and options.folds < 2:
        raise SweepError(f"--folds {options.folds}: cross-validation needs at least 2 folds")
    if options.trials is None:
        options.trials = 20 if options.search else 1
    if options.trials < 1 or options.jobs < 1:
        raise SweepError("--trials and --jobs must be at least 1")
    if options.name is None:
        options.name = options.search.stem if options.search else f"cv{options.folds}"
    return options, train_args


# -- what train.py would run -------------------------------------------------------------------
def resolved_config(train_args: list[str]) -> dict[str, Any]:
    """train.py's full config for these options (its ``--print_config``, in this process), or
    SweepError with train.py's one-line error."""
    import train  # imports Lightning: only once the options are known to be fine

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            train.main(["fit", *train_args, "--print_config"])
    except SystemExit as exit_:
        if exit_.code:
            message = err.getvalue().strip().splitlines() or [f"exit status {exit_.code}"]
            raise SweepError(message[-1].removeprefix("train.py: error: ")) from None
    return yaml.safe_load(out.getvalue())


def sample_overrides(space: dict[str, BaseDistribution]) -> list[list[str]]:
    """Option lists that together try every categorical choice and both ends of each range,
    so that train.py's parser sees every value the sweep may give it."""
    def ends(dist: BaseDistribution) -> list[Any]:
        if isinstance(dist, CategoricalDistribution):
            return list(dist.choices)
        return [dist.low, dist.high]

    lists = max(len(ends(d)) for d in space.values()) if space else 1
    return [[f"--{name}={command_line_value(ends(d)[i % len(ends(d))])}"
             for name, d in space.items()] for i in range(lists)]


def check_options(options: argparse.Namespace, train_args: list[str],
                  space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Everything the sweep will hand to train.py, checked by train.py's parser before any
    trial runs: the options alone, then with the values of the search space (a failure is
    narrowed down to the option it comes from). Returns the options' resolved config."""
    fold_args = [f"--data.init_args.folds={options.folds}", "--data.init_args.fold=0"] \
        if options.folds else []
    try:
        config = resolved_config([*train_args, *fold_args])
    except SweepError as error:
        if fold_args and "fold" in str(error):
            raise SweepError(f"--folds needs a datamodule with folds and fold arguments "
                             f"(datamodules.base.ClassificationDataModule has them): {error}"
                             ) from None
        raise
    for overrides in sample_overrides(space):
        try:
            resolved_config([*train_args, *fold_args, *overrides])
        except SweepError:
            for override in overrides:  # which one
                try:
                    resolved_config([*train_args, *fold_args, override])
                except SweepError as error:
                    raise SweepError(f"{options.search}: {override.removeprefix('--')}: "
                                     f"{error}") from None
            raise
    logger = config["trainer"].get("logger")
    if not logger:
        raise SweepError("trainer.logger is off: sweep.py reads each run's summary.json from "
                         "its log folder; keep a logger (TensorBoardLogger or CSVLogger)")
    if isinstance(logger, list) or (isinstance(logger, dict) and not {
            "save_dir", "name", "version"} <= set(logger.get("init_args") or {})):
        raise SweepError("trainer.logger: sweep.py places each trial's run with the logger's "
                         "save_dir, name and version (TensorBoardLogger, CSVLogger); this one "
                         "has no such arguments")
    if not (config.get("checkpoint") or {}).get("monitor"):
        raise SweepError("checkpoint.monitor is null: the sweep's objective is the monitored "
                         "validation metric; set --checkpoint.monitor and --checkpoint.mode")
    return config


def datamodule_from(data: dict[str, Any]) -> Any:
    """The datamodule a config's ``data`` section (class_path + init_args) describes."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--data", type=LightningDataModule)
    # ``instantiate`` replaced ``instantiate_classes`` in jsonargparse 4.49.
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(parser.parse_object({"data": data})).data


def fold_table(config: dict[str, Any], folds: int) -> Any:
    """The cross-validation folds of the configured data (its ``fold_table``), which also checks
    that every class has enough rows for the folds."""
    from datamodules.validation import DataError

    data = json.loads(json.dumps(config["data"]))
    data["init_args"] = {**data.get("init_args", {}), "folds": folds, "fold": 0}
    datamodule = datamodule_from(data)
    try:
        datamodule.prepare_data()
        return datamodule.fold_table()
    except DataError as error:
        raise SweepError(f"--folds {folds}: {error}") from None


# -- the study ---------------------------------------------------------------------------------
def open_study(options: argparse.Namespace, storage: optuna.storages.BaseStorage,
               storage_spec: str, settings: dict[str, Any],
               space: dict[str, BaseDistribution], direction: str) -> optuna.Study:
    """Create the study and queue its planned trials, or load it. Creating is atomic in every
    Optuna storage, so of several workers started at once exactly one queues the trials; the
    others wait until the plan is recorded."""
    sampler = (optuna.samplers.RandomSampler(seed=options.sampler_seed) if options.sampler ==
               "random" else optuna.samplers.TPESampler(seed=options.sampler_seed))
    try:
        study = optuna.create_study(study_name=options.name, storage=storage, sampler=sampler,
                                    direction=direction)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=options.name, storage=storage, sampler=sampler)
        planned = wait_for_plan(study)
        if study.user_attrs.get("settings") != settings:
            raise SweepError(f"study {options.name!r} in {storage_spec} was started with other "
                             f"options or another search space; continue it with the same "
                             f"command, or start a new one with --name") from None
        if options.trials > planned:  # a longer sweep: queue the difference
            queue_trials(study, options.trials - planned)
            study.set_user_attr("planned", options.trials)
        return study
    study.set_user_attr("settings", settings)
    study.set_user_attr("space", {name: optuna.distributions.distribution_to_json(d)
                                  for name, d in space.items()})
    queue_trials(study, options.trials)
    study.set_user_attr("planned", options.trials)  # last: the study is complete
    return study


def queue_trials(study: optuna.Study, count: int) -> None:
    for _ in range(count):
        study.enqueue_trial({})


def wait_for_plan(study: optuna.Study, seconds: float = 60.0) -> int:
    deadline = time.monotonic() + seconds
    while "planned" not in study.user_attrs:
        if time.monotonic() > deadline:
            raise SweepError(f"study {study.study_name!r} was created but never got its trials "
                             "(its first worker stopped at once?); start a new one with --name")
        time.sleep(0.2)
    return int(study.user_attrs["planned"])


def next_trial(study: optuna.Study,
               storage: optuna.storages.BaseStorage) -> optuna.Trial | None:
    """The next queued trial, taken atomically (as ``Study.ask`` takes one, through the storage
    the study was created with); None when none is left. ``Study.ask`` would create a new trial
    when the queue is empty, and a planned sweep must not grow."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """The trial's value of one option (a retried trial gets its earlier values back)."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)


def process_alive(pid: int) -> bool:
    """Whether a sweep process still runs (a reaped or zombie process has no command line)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            return b"sweep" in cmdline.read_bytes()
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
HOST = socket.gethostname()


# -- running trials ----------------------------------------------------------------------------
class Sweep:
    """This process's part of a sweep: ``jobs`` worker threads, each taking the next queued
    trial and running it as train.py processes (one per fold), until the queue is empty."""

    def __init__(self, options: argparse.Namespace, train_args: list[str],
                 space: dict[str, BaseDistribution], config: dict[str, Any],
                 storage: optuna.storages.BaseStorage, storage_spec: str,
                 study: optuna.Study, folder: Path) -> None:
        self.options, self.train_args, self.space = options, train_args, space
        self.config, self.storage, self.storage_spec = config, storage, storage_spec
        self.study, self.folder = study, folder
        self.monitor = config["checkpoint"]["monitor"]
        self.stopping = threading.Event()
        self.children: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.study_id = storage.get_study_id_from_name(study.study_name)

    # -- workers ------------------------------------------------------------------------------
    def run(self) -> None:
        self.requeue_stale_trials()
        workers = [threading.Thread(target=self.worker, daemon=True)
                   for _ in range(self.options.jobs)]
        for worker in workers:
            worker.start()
            time.sleep(0.5)  # staggered: the workers' first samples see each other's trials
        for worker in workers:
            while worker.is_alive():  # short joins: signals reach the main thread meanwhile
                worker.join(timeout=0.5)

    def worker(self) -> None:
        while not self.stopping.is_set():
            trial = next_trial(self.study, self.storage)
            if trial is None:
                return
            try:
                self.run_trial(trial)
            except Exception as error:
                self.fail(trial, f"sweep.py: {type(error).__name__}: {error}")

    def stop(self, signum: int, frame: Any) -> None:
        """Ctrl+C or SIGTERM: stop every running trial (train.py saves its last.ckpt); they are
        queued again for the next run of the command."""
        self.stopping.set()
        with self.lock:
            for child in self.children:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGTERM)

    # -- one trial ----------------------------------------------------------------------------
    def run_trial(self, trial: optuna.Trial) -> None:
        trial.set_user_attr("worker", f"{HOST}:{os.getpid()}")
        params = {name: suggest(trial, name, dist) for name, dist in self.space.items()}
        started = time.perf_counter()
        folds = self.options.folds
        scores, metrics = [], []
        for fold in range(folds or 1):
            run = f"trial_{trial.number:04d}" + (f"/fold_{fold}" if folds else "")
            if fold == 0:
                trial.set_user_attr("run_folder", str(self.folder / run.split("/")[0]))
            returncode, last_line = self.train(trial.number, params, run, fold if folds else None)
            if returncode != 0 and self.stopping.is_set():
                self.requeue(trial.number, params, "the sweep was stopped during it")
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
            summary = json.loads((self.folder / run / "summary.json").read_text())
            if summary.get("best_score") is None:
                self.fail(trial, f"the run logged no {self.monitor!r}", run)
                return
            scores.append(summary["best_score"])
            metrics.append(summary.get("best_epoch_metrics") or {})
        trial.set_user_attr("metrics", mean_and_std(metrics))
        if folds:
            trial.set_user_attr("fold_metrics", metrics)
        self.study.tell(trial, sum(scores) / len(scores))
        self.say(trial, "complete", started, params,
                 f"{self.monitor} {sum(scores) / len(scores):.4f}" + (
                     f" (mean of {folds} folds)" if folds else ""))

    def trial_args(self, number: int, params: dict[str, Any], run: str,
                   fold: int | None) -> list[str]:
        """train.py's options for one run of a trial: the sweep's, the trial's values, where the
        run goes, and (with a pruner) the callback that reports to the trial."""
        args = [*self.train_args]
        args += [f"--{name}={command_line_value(value)}" for name, value in params.items()]
        if fold is not None:
            args += [f"--data.init_args.folds={self.options.folds}",
                     f"--data.init_args.fold={fold}"]
        args += [f"--trainer.default_root_dir={self.folder / run}",
                 f"--trainer.logger.init_args.save_dir={self.folder.parent}",
                 f"--trainer.logger.init_args.name={self.folder.name}",
                 f"--trainer.logger.init_args.version={run}"]
        if self.options.pruner != "none":
            epochs = self.config["trainer"].get("max_epochs") or 0
            pruning = {"class_path": "callbacks.optuna_pruning.OptunaPruning", "init_args": {
                "storage": self.storage_spec, "study_name": self.study.study_name,
                "trial": number, "monitor": self.monitor,
                "step_offset": (fold or 0) * max(epochs, 1000 if epochs <= 0 else epochs),
                "pruner": {"class_path": "optuna.pruners.MedianPruner", "init_args": {
                    "n_startup_trials": self.options.startup_trials,
                    "n_warmup_steps": self.options.warmup_epochs}}}}
            args.append(f"--trainer.callbacks+={json.dumps(pruning)}")
        return args

    def train(self, number: int, params: dict[str, Any], run: str,
              fold: int | None) -> tuple[int, str]:
        """Run train.py for one trial (fold); its output goes to train.log in the run folder.
        Returns the exit status and the last error line."""
        command = [sys.executable, str(TRAIN), "fit", *self.trial_args(number, params, run, fold)]
        run_dir = self.folder / run
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "command.txt").write_text("python " + shlex.join(command[1:]) + "\n")
        with open(run_dir / "train.log", "w") as log, self.lock:
            if self.stopping.is_set():
                return 143, ""
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                     env=self.trial_environment(), start_new_session=True,
                                     preexec_fn=die_with_parent)
            self.children.add(child)
        returncode = child.wait()
        with self.lock:
            self.children.discard(child)
        lines = (run_dir / "train.log").read_text(errors="replace").splitlines()
        errors = [line for line in lines if "error:" in line or "Error" in line]
        return returncode, (errors or lines or [""])[-1].strip()

    def trial_environment(self) -> dict[str, str]:
        """With ``--jobs N``, each trial's torch gets 1/N of the CPUs for its threads (torch
        takes them all by default, and N trials would fight over them), unless the user set
        OMP_NUM_THREADS."""
        env = dict(os.environ)
        if self.options.jobs > 1 and "OMP_NUM_THREADS" not in env:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
                os.cpu_count() or 1)
            env["OMP_NUM_THREADS"] = str(max(1, cpus // self.options.jobs))
        return env

    # -- ends ---------------------------------------------------------------------------------
    def fail(self, trial: optuna.Trial, why: str, run: str = "") -> None:
        trial.set_user_attr("error", why)
        self.study.tell(trial, state=TrialState.FAIL)
        log = f" (see {self.folder / run / 'train.log'})" if run else ""
        self.say(trial, "failed", None, trial.params, why + log)

    def requeue(self, number: int, params: dict[str, Any], why: str) -> None:
        """An interrupted trial ends as failed (Optuna cannot reopen a trial) and the same
        values are queued again, so the sweep still runs its planned number of trials."""
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        self.storage.set_trial_user_attr(trial_id, "interrupted", why)
        try:
            self.study.tell(number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return  # another process ended it first, and queued it again
        self.study.enqueue_trial(params, user_attrs={"retry_of": number})
        print(f"trial {number}: interrupted ({why}); queued again", flush=True)

    def requeue_stale_trials(self) -> None:
        """Trials left running by a sweep process of this machine that is gone (killed, machine
        restarted) are queued again."""
        for trial in self.storage.get_all_trials(self.study_id, states=(TrialState.RUNNING,)):
            host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
            if host == HOST and pid.isdigit() and not process_alive(int(pid)):
                self.requeue(trial.number, trial.params,
                             f"its sweep process {pid} stopped during it")

    def say(self, trial: optuna.Trial, state: str, started: float | None,
            params: dict[str, Any], detail: str) -> None:
        took = f" in {time.perf_counter() - started:.0f} s" if started is not None else ""
        values = ", ".join(f"{name.rpartition('.')[2]}={short(value)}"
                           for name, value in params.items())
        print(f"trial {trial.number} {state}{took}: {detail}" + (f"  [{values}]" if values else ""),
              flush=True)


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text.rpartition(".")[2] if text.count(".") >= 2 and " " not in text else text


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


# -- results -----------------------------------------------------------------------------------
def report(sweep: Sweep) -> bool:
    """The table of trials, the best trial's metrics and run folder (per fold with --folds);
    trials.csv, best_config.yaml and the plots in the study folder."""
    from rich.console import Console
    from rich.table import Table

    study, folder, monitor = sweep.study, sweep.folder, sweep.monitor
    trials = [t for t in study.get_trials(deepcopy=False) if "interrupted" not in t.user_attrs]
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    console = Console()
    console.print(f"Study {study.study_name}: {count[TrialState.COMPLETE]} complete, "
                  f"{count[TrialState.PRUNED]} pruned, {count[TrialState.FAIL]} failed, "
                  f"{count[TrialState.RUNNING] + count[TrialState.WAITING]} to go",
                  highlight=False)
    table = Table(caption=f"{'highest' if maximize else 'lowest'} {monitor} first",
                  caption_justify="left")
    for column in ("trial", "state", monitor, *(n.rpartition(".")[2] for n in sweep.space)):
        table.add_column(column, justify="right" if column != "state" else "left")

    def order(t: optuna.trial.FrozenTrial) -> tuple[int, float]:
        value = t.value if t.value is not None else float("nan")
        return (0 if t.state == TrialState.COMPLETE else 1,
                -value if maximize and t.value is not None else value)

    for t in sorted(trials, key=order):
        value = "" if t.value is None else f"{t.value:.4f}"
        if t.state == TrialState.FAIL:
            value = str(t.user_attrs.get("error", ""))[:60]
        table.add_row(str(t.number), t.state.name.lower(), value,
                      *(short(t.params.get(name, "")) for name in sweep.space))
    if sweep.space:
        console.print(table)
    frame = study.trials_dataframe()
    frame.to_csv(folder / "trials.csv", index=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        print(f"No trial completed. Runs and their train.log: {folder}", flush=True)
        return False
    best = study.best_trial
    console.print(best_table(best, sweep))
    print(f"Best run folder: {best.user_attrs.get('run_folder')}", flush=True)
    if sweep.space:
        write_best_config(best, sweep)
        save_plots(study, folder)
    print(f"Study folder: {folder} (trials.csv"
          + (", best_config.yaml, *.png)" if sweep.space else ")")
          + f"; tensorboard --logdir {folder}", flush=True)
    return True


def best_table(best: optuna.trial.FrozenTrial, sweep: Sweep) -> Any:
    from rich.table import Table

    metrics: dict[str, list[float]] = best.user_attrs.get("metrics", {})
    folds: list[dict[str, float]] = best.user_attrs.get("fold_metrics", [])
    table = Table(title=f"Best trial: {best.number}", title_justify="left")
    table.add_column("metric")
    for fold in range(len(folds)):
        table.add_column(f"fold {fold}", justify="right")
    table.add_column("mean ± std" if folds else "best epoch", justify="right")
    for name, (mean, std) in metrics.items():
        cells = [f"{run[name]:.4f}" for run in folds]
        table.add_row(name, *cells, f"{mean:.4f} ± {std:.4f}" if folds else f"{mean:.4f}")
    return table


def write_best_config(best: optuna.trial.FrozenTrial, sweep: Sweep) -> None:
    """The full config of the best trial's values (train.py's --print_config of the sweep's
    options plus those values, without the sweep's run placement and pruning callback)."""
    overrides = [f"--{name}={command_line_value(value)}" for name, value in best.params.items()]
    config = resolved_config([*sweep.train_args, *overrides])
    header = (f"# Best trial {best.number} of study {sweep.study.study_name}: {sweep.monitor} "
              f"{best.value:.6g}" + (f" (mean over {sweep.options.folds} folds; this config "
                                     "trains on the usual split)" if sweep.options.folds else "")
              + f"\n# Run folder: {best.user_attrs.get('run_folder')}"
              + "\n# python train.py --config <this file>\n")
    target = sweep.folder / "best_config.yaml"
    partial = target.with_suffix(".yaml.partial")
    partial.write_text(header + yaml.safe_dump(config, sort_keys=False))
    os.replace(partial, target)


def save_plots(study: optuna.Study, folder: Path) -> None:
    """Optuna's optimisation history, parameter importances and parallel coordinates as PNGs
    (matplotlib; a plot that needs more finished trials is left out)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    for name, plot in (("history", plots.plot_optimization_history),
                       ("importances", plots.plot_param_importances),
                       ("parallel_coordinate", plots.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            print(f"No {name} plot: {error}", flush=True)
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(figure)


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        options, train_args = parse_options(argv)
        space = load_search_space(options.search) if options.search else {}
        config = check_options(options, train_args, space)
        folds = fold_table(config, options.folds) if options.folds else None
    except (SweepError, SearchSpaceError) as error:
        sys.stderr.write(f"sweep.py: error: {error}\n")
        return 2
    from callbacks.optuna_pruning import open_storage  # imports Lightning

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = (options.dir / options.name).resolve()
    storage_spec = options.storage or str(folder / "study.journal")
    settings = {"train_args": train_args, "folds": options.folds, "pruner": options.pruner,
                "space": {n: optuna.distributions.distribution_to_json(d)
                          for n, d in space.items()}}
    direction = "maximize" if config["checkpoint"].get("mode") == "max" else "minimize"
    folder.mkdir(parents=True, exist_ok=True)
    storage = open_storage(storage_spec)
    try:
        study = open_study(options, storage, storage_spec, settings, space, direction)
    except SweepError as error:
        sys.stderr.write(f"sweep.py: error: {error}\n")
        return 2
    if folds is not None:
        folds.to_csv(folder / "folds.csv", index=False)
    sweep = Sweep(options, train_args, space, config, storage, storage_spec, study, folder)
    signal.signal(signal.SIGINT, sweep.stop)
    signal.signal(signal.SIGTERM, sweep.stop)
    print(f"Study {options.name!r} in {storage_spec}: {study.user_attrs['planned']} trials "
          f"planned, {options.jobs} at a time here; runs in {folder}", flush=True)
    sweep.run()
    if sweep.stopping.is_set():
        print("sweep.py: stopped; the same command continues the study", file=sys.stderr)
        return 143
    return 0 if report(sweep) else 1


if __name__ == "__main__":
    sys.exit(main())
