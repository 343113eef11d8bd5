"""The study: where it is stored, the queue of its planned trials, and the trials a stopped
sweep left behind.

The planned trials are queued (Optuna's ``WAITING`` state) when the study is created, and each
worker takes the next one with the storage's atomic state change, as ``Study.ask`` takes a
queued trial; ``Study.ask`` would create a new trial once the queue is empty, and a planned
sweep must not grow. So ``--trials N`` is N trials whatever the number of processes and machines
(Optuna's advice for queued trials and several workers, optuna/optuna#2925, is to queue them
from one process: the one that creates the study does).

Taking a queued trial goes through the storage object's own methods (``BaseStorage``), which
Optuna keeps public for libraries built on it but not for end users (optuna/optuna#520, where
the "a trial that is not WAITING cannot be set RUNNING" rule this relies on was added;
``tests/test_sweep.py`` checks the rule). ``optuna.Trial(study, trial_id)`` is how
``Study.ask`` itself makes the trial object.
"""

import argparse
import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from sweeps import SweepError
from sweeps.train_config import first_difference

HOST = socket.gethostname()


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """``journal:PATH``: a journal file (Optuna's storage for several processes on one machine,
    which it recommends over SQLite for that; sweep.py's default, in the study folder). A
    database URL (``postgresql://...``, ``sqlite:///...``): Optuna's RDB storage. Anything else
    is refused, so a mistyped URL never becomes a local file the user takes for a shared study.
    A database that cannot be opened is a SweepError naming it (password hidden)."""
    if storage.startswith("journal:"):
        path = Path(storage.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if "://" not in storage:
        raise SweepError(f"--storage {masked(storage)} is not a storage: give a database URL "
                         "(postgresql://user@host/db, sqlite:///study.db) or journal:PATH")
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return rdb_storage(storage)
    except ImportError as error:
        raise SweepError(f"--storage {masked(storage)}: {error} (for PostgreSQL: pip "
                         'install -e ".[postgres]")') from None
    except SQLAlchemyError as error:
        first = str(error).strip().splitlines()[0]
        raise SweepError(f"--storage {masked(storage)}: cannot open it: {first}") from None


def rdb_storage(url: str, attempts: int = 5) -> optuna.storages.BaseStorage:
    """Optuna's RDB storage, as a study wraps it (a cache of finished trials), so that calls on
    the storage and the study's own see the same trials. Several processes that make the tables
    of a fresh database at once collide (optuna/optuna#1092; Optuna's advice is to create the
    study from one process first); the losers find the tables made when they try again."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(attempts):
        try:
            return optuna.storages.get_storage(url)
        except SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def masked(url: str) -> str:
    """A storage URL with its password replaced by ``***``, for printing."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    user, colon, _ = credentials.partition(":")
    return scheme + sep + (user + (":***" if colon else "") + at if at else "") + host


def sampler_for(options: argparse.Namespace, creates: bool) -> optuna.samplers.BaseSampler:
    """``--sampler_seed`` seeds the process that creates the study (a fresh one-process sweep
    is reproducible); every other process (a second worker, a machine, the rerun after a
    crash) draws its own seed, or it would sample the values already tried again. TPE's
    ``constant_liar`` keeps concurrent trials from being sampled at the same point."""
    seed = options.sampler_seed if creates else None
    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def open_study(options: argparse.Namespace, storage: optuna.storages.BaseStorage,
               settings: dict[str, Any], direction: str) -> optuna.Study:
    """Create the study and queue its planned trials, or load it. Creating is atomic in every
    Optuna storage, so of several workers started at once exactly one queues the trials; the
    others wait until the plan is recorded. A study started with other settings (the resolved
    config, the search space, folds, pruner) is refused, naming the first difference."""
    try:
        study = optuna.create_study(study_name=options.name, storage=storage,
                                    sampler=sampler_for(options, creates=True),
                                    direction=direction)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=options.name, storage=storage,
                                  sampler=sampler_for(options, creates=False))
        planned = wait_for_plan(study)
        difference = first_difference(study.user_attrs.get("settings"), settings)
        if difference:
            raise SweepError(f"study {options.name!r} in {masked(options.storage_spec)} was "
                             f"started with other settings ({difference[:300]}); continue it "
                             "with the same command, or start a new one with --name") from None
        if options.trials > planned:  # a longer sweep: queue the difference
            queue_trials(study, options.trials - planned)
            study.set_user_attr("planned", options.trials)
        return study
    study.set_user_attr("settings", settings)
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
    """The next queued trial, taken atomically through the storage the study was created with
    (see the module's docstring); None when none is left."""
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


def requeue(study: optuna.Study, storage: optuna.storages.BaseStorage, number: int,
            params: dict[str, Any], why: str) -> None:
    """An interrupted trial ends as failed (Optuna cannot reopen a trial), marked
    ``interrupted``, and the same values are queued again: the sweep still runs its planned
    number of trials. Of several processes doing this at once, the one whose state change
    lands queues the retry."""
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    try:
        storage.set_trial_user_attr(trial_id, "interrupted", why)
        study.tell(number, state=TrialState.FAIL)
    except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
        return  # another process ended it first, and queued it again
    study.enqueue_trial(params, user_attrs={"retry_of": number})
    print(f"trial {number}: interrupted ({why}); queued again", flush=True)


def retry_failed_trials(study: optuna.Study) -> int:
    """Queue each failed trial again with its values, once (``sweep.py --retry_failed``, after
    fixing what made them fail); returns how many. Interrupted trials are not among them: they
    were queued again when they stopped. The failed trial stays in the study, superseded by
    its retry (user attribute ``retry_of``), and tables leave it out."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    failed = [t for t in trials if t.state == TrialState.FAIL
              and "interrupted" not in t.user_attrs and t.number not in retried]
    for trial in failed:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return len(failed)


def current_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's trials less those queued again (interrupted, or failed and retried)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return [t for t in trials if "interrupted" not in t.user_attrs
            and not (t.state == TrialState.FAIL and t.number in retried)]


def requeue_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """Trials left running by a sweep process of this machine that is gone (killed, machine
    restarted) are queued again."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in storage.get_all_trials(study_id, states=(TrialState.RUNNING,)):
        host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        # This process runs no trial yet: its own PID on a trial is an earlier process's (a
        # restarted container often gets the same PID).
        if host == HOST and pid.isdigit() and (int(pid) == os.getpid()
                                               or not process_alive(int(pid))):
            requeue(study, storage, trial.number, trial.params,
                    f"its sweep process {pid} stopped during it")


def worker_name() -> str:
    """Recorded in each trial (user attribute ``worker``), for :func:`requeue_stale_trials`."""
    return f"{HOST}:{os.getpid()}"
