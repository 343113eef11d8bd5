"""sweep.py: Optuna sweeps and k-fold cross-validation over train.py's own configs, run as a
user runs them (real sweep.py and train.py processes, the real study storage, no mocks)."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from datamodules.folds import stratified_folds
from sweeps.search_space import SearchSpaceError, load_search_space
from tests.conftest import MY_MODULE, REPO, base_args, run_train_subprocess, start_sweep

TINY = ["--max_epochs=3", "--trainer.limit_train_batches=12", "--trainer.limit_val_batches=4",
        "--trainer.enable_checkpointing=true"]
# max_lr down to 1e-7 is a deliberately bad range: such a trial hardly learns in 3 epochs.
SEARCH = """
model.init_args.scheduler.init_args.max_lr: {float: [1.0e-7, 3.0e-2], log: true}
model.init_args.backbone.init_args.dropout: {categorical: [0.0, 0.2]}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that ran to an end (not the ones a stopped sweep interrupted)."""
    return [t for t in study.get_trials() if t.state.is_finished()
            and "interrupted" not in t.user_attrs]


def journal_study(folder: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "study.journal")))
    return optuna.load_study(study_name=folder.name, storage=storage)


def communicate(process: subprocess.Popen[str], timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


# -- the pieces ------------------------------------------------------------------------------
def test_folds_are_stratified_and_differ_by_at_most_one_row() -> None:
    labels = np.array([0] * 50 + [1] * 31 + [2] * 7)
    folds = stratified_folds(labels, 3, seed=5)
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1
    for label in (0, 1, 2):
        per_class = np.bincount(folds[labels == label], minlength=3)
        assert per_class.max() - per_class.min() <= 1
    assert (stratified_folds(labels, 3, seed=5) == folds).all()  # from the seed alone
    assert (stratified_folds(labels, 3, seed=6) != folds).any()
    with pytest.raises(ValueError, match="class 2 has only 7 rows"):
        stratified_folds(labels, 8, seed=0)


@pytest.mark.parametrize(("spec", "message"), [
    ("lr: {float: [0.1, 0.01]}", "lr: empty range"),
    ("lr: {float: [0, 1], log: true}", "lr: log: true needs low > 0"),
    ("lr: {uniform: [0, 1]}", "lr: expected exactly one of float, int, categorical"),
    ("lr: {categorical: []}", "lr: categorical needs a non-empty list"),
    ("width: {int: [8, 64.5]}", "width: int needs \\[low, high\\]"),
])
def test_search_space_rejects_a_bad_entry(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(SearchSpaceError, match=message):
        load_search_space(write(tmp_path / "s.yaml", spec))


def test_search_space_reads_numbers_yaml_leaves_as_strings(tmp_path: Path) -> None:
    space = load_search_space(write(tmp_path / "s.yaml", "lr: {float: [1e-4, 1e-1], log: true}"))
    assert space["lr"] == FloatDistribution(1e-4, 1e-1, log=True)


def test_a_queued_trial_is_taken_by_one_worker_only(tmp_path: Path) -> None:
    """The storage rule sweeps.study.next_trial relies on: a trial that is no longer waiting
    cannot be set running again (optuna/optuna#520)."""
    from sweeps.study import next_trial, open_storage

    storage = open_storage(f"journal:{tmp_path / 'study.journal'}")
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({})
    first = next_trial(study, storage)
    assert first is not None and first.number == 0
    assert next_trial(study, storage) is None  # the queue is empty: no new trial is made
    assert len(study.get_trials()) == 1
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("s"), 0)
    assert storage.set_trial_state_values(trial_id, state=TrialState.RUNNING) is False


@pytest.mark.parametrize(("case", "named"), [
    ("unknown key", "model.init_args.optimizer.init_args.momentum_typo=0.1"),
    ("empty range", "empty range [0.01, 0.01]"),
    ("class that does not exist", "torch.optim.Nope"),
    ("one fold", "--folds 1: cross-validation needs at least 2 folds"),
    ("trials without a search space", "--trials 4 without --search"),
    ("more folds than rows of a class", "--folds 200: "),
    ("storage without a URL scheme", "--storage postgres:/oops@@host is not a storage"),
])
@pytest.mark.slow
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
        run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str], case: str,
        named: str) -> None:
    import sweep

    search = {"unknown key": "model.init_args.optimizer.init_args.momentum_typo: "
                             "{float: [0.1, 0.9]}",
              "empty range": "model.init_args.optimizer.init_args.lr: {float: [0.01, 0.01]}",
              "class that does not exist": "model.init_args.optimizer: {categorical: "
                                           "[torch.optim.AdamW, torch.optim.Nope]}"}
    args = [*base_args(digits_root, run_dir / "logs"), "--dir", str(run_dir / "sweeps")]
    if case in search:
        args += ["--search", str(write(run_dir / "search.yaml", search[case]))]
    elif case == "trials without a search space":
        args += ["--folds", "3", "--trials", "4"]
    elif case == "storage without a URL scheme":
        args += ["--folds", "2", "--storage", "postgres:/oops@@host"]
    else:
        args += ["--folds", "1" if case == "one fold" else "200"]
    assert sweep.main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("sweep.py: error: ") and "\n" not in error, error
    assert named in error
    assert not (run_dir / "sweeps").exists() and not (run_dir / "logs").exists()


def readme_search_space() -> str:
    text = (REPO / "docs" / "sweeps.md").read_text()
    start = text.index("```yaml", text.index("**The search space**")) + len("```yaml")
    return text[start:text.index("```", start)]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["docs/sweeps.md", "configs/search/digits.yaml"])
def test_the_shipped_search_spaces_pass_train_py_s_parser(
        run_dir: Path, digits_root: Path, source: str) -> None:
    import sweep
    from sweeps.train_config import check_options

    path = (write(run_dir / "readme.yaml", readme_search_space()) if source == "docs/sweeps.md"
            else REPO / source)
    space = load_search_space(path)
    assert len(space) >= 4
    options, train_args = sweep.parse_options(["--search", str(path),
                                               *base_args(digits_root, run_dir / "logs")])
    config = check_options(options, train_args, space)  # every choice and range end
    assert config["checkpoint"]["monitor"] == "val/loss"


# -- sweeps ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_prunes_a_bad_range_and_best_config_reproduces_the_best_trial(
        run_dir: Path, digits_root: Path) -> None:
    search = write(run_dir / "search.yaml", SEARCH)
    output = communicate(start_sweep(
        [*base_args(digits_root, run_dir / "logs"), *TINY, "--search", str(search),
         "--trials=4", "--startup_trials=1", "--warmup_epochs=1", "--sampler=random",
         "--sampler_seed=6", "--dir", "sweeps"], cwd=run_dir))
    folder = run_dir / "sweeps" / "search"
    study = journal_study(folder)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # distinct values
    states = [t.state for t in trials]
    assert optuna.trial.TrialState.PRUNED in states, output
    assert optuna.trial.TrialState.COMPLETE in states
    for trial in trials:  # each one a real run, its values in its config
        run = Path(trial.user_attrs["run_folder"])
        config = yaml.safe_load((run / "config.yaml").read_text())
        lr = trial.params["model.init_args.scheduler.init_args.max_lr"]
        assert config["model"]["init_args"]["scheduler"]["init_args"]["max_lr"] == lr
        assert list((run / "checkpoints").glob("*.ckpt"))
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert "pruned trial" in (run / "train.log").read_text()
    best = study.best_trial
    assert f"Best trial: {best.number}" in output
    assert f"Best run folder: {best.user_attrs['run_folder']}" in output
    for name in ("history.png", "importances.png", "parallel_coordinate.png", "trials.csv"):
        assert (folder / name).stat().st_size > 0

    # best_config.yaml alone, through train.py, trains to the best trial's validation loss.
    result = run_train_subprocess(["--config", str(folder / "best_config.yaml"),
                                   "--trainer.logger.init_args.save_dir=again"], cwd=run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(next((run_dir / "again").rglob("summary.json")).read_text())
    assert summary["best_score"] == pytest.approx(best.value, abs=1e-6)


@pytest.mark.slow
def test_two_sweep_processes_run_exactly_the_planned_trials(
        run_dir: Path, digits_root: Path) -> None:
    # A class_path choice: each trial trains with the optimizer class it drew.
    search = write(run_dir / "search.yaml", SEARCH + "model.init_args.optimizer: "
                   "{categorical: [torch.optim.AdamW, torch.optim.RAdam]}\n")
    command = [*base_args(digits_root, run_dir / "logs"), *TINY, "--max_epochs=1",
               "--search", str(search), "--trials=5", "--dir", "sweeps"]
    # One process runs two trials at a time (worker threads), the other one.
    processes = [start_sweep([*command, "--jobs=2"], cwd=run_dir),
                 start_sweep(command, cwd=run_dir)]
    for process in processes:
        communicate(process)
    trials = journal_study(run_dir / "sweeps" / "search").get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]
    assert all(t.state.is_finished() for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # both processes ran trials
    for trial in trials:
        config = yaml.safe_load((Path(trial.user_attrs["run_folder"]) / "config.yaml").read_text())
        assert (config["model"]["init_args"]["optimizer"]["class_path"]
                == trial.params["model.init_args.optimizer"])


def run_as_postgres_user() -> list[str]:
    """Commands that start PostgreSQL: it refuses to run as root."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        if shutil.which("runuser") and subprocess.run(["id", user], capture_output=True
                                                      ).returncode == 0:
            return ["runuser", "-u", user, "--"]
    pytest.skip("running as root, and no user to run PostgreSQL as")
    return []


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL cluster in a temporary folder (Unix socket, own port), stopped
    and removed afterwards."""
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    as_user = run_as_postgres_user()
    folder = Path(tempfile.mkdtemp(prefix="sweep-pg-"))
    if as_user:
        shutil.chown(folder, user=as_user[2])
    port = 20000 + os.getpid() % 20000
    data = folder / "data"
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True)  # noqa: E731
    try:
        run("initdb", "-D", str(data), "-A", "trust", "-U", "sweep")
        run("pg_ctl", "-D", str(data), "-l", str(folder / "server.log"), "-w", "-o",
            f"-k {folder} -p {port} -c listen_addresses=''", "start")
        run("psql", "-h", str(folder), "-p", str(port), "-U", "sweep", "-d", "postgres",
            "-c", "CREATE DATABASE optuna")
        yield f"postgresql://sweep@/optuna?host={folder}&port={port}"
    finally:
        subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_machines_share_one_postgresql_study(
        run_dir: Path, digits_root: Path, postgres_url: str) -> None:
    search = write(run_dir / "search.yaml", SEARCH)
    command = [*base_args(digits_root, run_dir / "logs"), *TINY, "--max_epochs=1",
               "--search", str(search), "--trials=4", "--storage", postgres_url,
               "--name", "shared"]
    # Two "machines": each its own sweep folder for its runs, one study in the database.
    machines = [start_sweep([*command, "--dir", f"machine{i}"], cwd=run_dir) for i in (0, 1)]
    outputs = [communicate(machine) for machine in machines]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    best = min(trials, key=lambda t: t.value)
    assert study.best_trial.number == best.number
    assert any(f"Best trial: {best.number}" in output for output in outputs)
    for trial in trials:  # each run is in the folder of the machine that ran it
        assert (Path(trial.user_attrs["run_folder"]) / "summary.json").is_file()
    assert {Path(t.user_attrs["run_folder"]).parent.parent.name for t in trials} == {
        "machine0", "machine1"}


def processes_with(text: str) -> list[Path]:
    """The running processes whose command line contains ``text`` (Linux)."""
    found = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if text.encode() in (process / "cmdline").read_bytes():
                found.append(process)
        except OSError:
            continue  # ended meanwhile
    return found


@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill -9", "SIGTERM"])
def test_a_stopped_sweep_continues_where_it_stopped(
        run_dir: Path, digits_root: Path, stop: signal.Signals,
        capsys: pytest.CaptureFixture[str]) -> None:
    search = write(run_dir / "search.yaml", SEARCH)
    command = [*base_args(digits_root, run_dir / "logs"), *TINY, "--max_epochs=2",
               "--search", str(search), "--trials=2", "--pruner=none", "--dir", "sweeps"]
    folder = run_dir / "sweeps" / "search"
    first = start_sweep(command, cwd=run_dir)
    deadline = time.monotonic() + 300
    while not (folder / "trial_0001" / "config.yaml").is_file():  # trial 1 is training
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
        time.sleep(0.2)
    time.sleep(1)
    first.send_signal(stop)
    first_output, _ = first.communicate(timeout=120)
    if stop == signal.SIGTERM:  # as Ctrl+C: the sweep stops its trial, says so, exits 143
        assert first.returncode == 143, first_output
        assert "trial 1: interrupted" in first_output
        assert "the same command continues the study" in first_output
    # Killed outright, the sweep's trial gets SIGTERM from the kernel. Either way the trial's
    # train.py saves last.ckpt and stops.
    deadline = time.monotonic() + 60
    while processes_with("trial_0001"):
        assert time.monotonic() < deadline, "the stopped sweep left its trial running"
        time.sleep(0.5)
    assert (folder / "trial_0001" / "checkpoints" / "last.ckpt").is_file()

    output = communicate(start_sweep(command, cwd=run_dir))
    if stop == signal.SIGKILL:  # found by the next run of the command
        assert "trial 1: interrupted" in output
    study = journal_study(folder)
    ran = finished(study)
    assert len(ran) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in ran)
    interrupted = [t for t in study.get_trials() if "interrupted" in t.user_attrs]
    assert [t.number for t in interrupted] == [1]
    retry = next(t for t in ran if t.user_attrs.get("retry_of") == 1)
    assert retry.params == interrupted[0].params  # the same values, run again
    assert 0 in {t.number for t in ran}  # trial 0, finished before the kill, was not rerun
    assert sum(t.user_attrs.get("retry_of") is not None for t in ran) == 1

    # The same study with other settings would mix two experiments: refused, naming the change.
    import sweep

    assert sweep.main([*command, "--max_epochs=3"]) == 2
    error = capsys.readouterr().err
    assert "trainer.max_epochs: 2 -> 3" in error and "--name" in error


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_trials_report_and_stop_together(run_dir: Path, digits_root: Path) -> None:
    # The second trial's learning rate is far too low: the pruner stops it on both ranks.
    search = write(run_dir / "search.yaml",
                   "model.init_args.scheduler.init_args.max_lr: {categorical: [0.01, 1.0e-7]}")
    output = communicate(start_sweep(
        [*base_args(digits_root, run_dir / "logs"), *TINY, "--devices=2", "--search",
         str(search), "--trials=2", "--startup_trials=1", "--warmup_epochs=1",
         "--sampler=random", "--sampler_seed=10", "--dir", "sweeps"], cwd=run_dir))
    trials = journal_study(run_dir / "sweeps" / "search").get_trials()
    by_lr = {t.params["model.init_args.scheduler.init_args.max_lr"]: t for t in trials}
    assert set(by_lr) == {0.01, 1.0e-7}, output
    good, bad = by_lr[0.01], by_lr[1.0e-7]
    assert good.number == 0 and good.state == optuna.trial.TrialState.COMPLETE
    assert bad.state == optuna.trial.TrialState.PRUNED
    log = (Path(bad.user_attrs["run_folder"]) / "train.log").read_text()
    summary = json.loads((Path(bad.user_attrs["run_folder"]) / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2  # stopped after epoch 1
    assert "pruned trial 1 after epoch 1" in log


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_a_cross_validated_sweep_goes_on(
        run_dir: Path, digits_root: Path) -> None:
    # The first trial's learning rate makes the loss non-finite: train.py stops it (exit 1).
    search = write(run_dir / "search.yaml",
                   "model.init_args.scheduler.init_args.max_lr: {categorical: [1.0e+12, 0.01]}")
    output = communicate(start_sweep(
        [*base_args(digits_root, run_dir / "logs"), *TINY, "--max_epochs=1", "--search",
         str(search), "--trials=2", "--folds=2", "--sampler=random", "--sampler_seed=10",
         "--dir", "sweeps"], cwd=run_dir))
    folder = run_dir / "sweeps" / "search"
    study = journal_study(folder)
    failed, good = study.get_trials()
    assert failed.params["model.init_args.scheduler.init_args.max_lr"] == 1.0e12, output
    assert failed.state == TrialState.FAIL
    assert "training loss is" in failed.user_attrs["error"]
    assert "trial 0 failed" in output and "Best trial: 1" in output
    record = json.loads((folder / "trial_0000" / "fold_0" / "trial.json").read_text())
    assert record["trial"] == 0 and record["params"] == failed.params
    # The objective of a cross-validated trial is the mean of its folds' best values.
    scores = [json.loads((folder / "trial_0001" / f"fold_{k}" / "summary.json").read_text())
              ["best_score"] for k in (0, 1)]
    assert good.state == TrialState.COMPLETE
    assert good.value == pytest.approx(sum(scores) / 2, abs=1e-9)

    # A finished trial's run, started again by hand, trains and leaves the study alone.
    command = shlex.split((folder / "trial_0001" / "fold_0" / "command.txt").read_text())
    result = subprocess.run([sys.executable, *command[1:]], cwd=run_dir, capture_output=True,
                            text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trial 1 of study 'search' has ended (complete)" in result.stdout + result.stderr
    again = journal_study(folder).get_trials()
    assert [(t.state, t.value, t.intermediate_values) for t in again] == [
        (t.state, t.value, t.intermediate_values) for t in (failed, good)]


@pytest.mark.slow
def test_trials_failing_the_same_way_stop_the_sweep_and_retry_failed_runs_them_again(
        run_dir: Path, digits_root: Path) -> None:
    # One image of the data is broken: every trial fails the same way, before its first step.
    root = run_dir / "digits"
    shutil.copytree(digits_root, root)
    broken = sorted((root / "images").iterdir())[0]
    broken.write_text("not a PNG")
    args = [*base_args(root, run_dir / "logs"), "--max_epochs=1",
            "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "--search", str(write(run_dir / "search.yaml", SEARCH)), "--trials=5",
            "--dir", "sweeps"]
    process = start_sweep(args, cwd=run_dir)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 1, output[-3000:]
    assert output.count("failed:") == 3, output  # three trials, then it stops
    (stopped,) = [line for line in output.splitlines() if line.startswith("sweep.py: error:")]
    assert stopped.startswith("sweep.py: error: the first 3 trials failed the same way, so the "
                              "sweep stopped: train.py: error: ")
    assert str(broken) in stopped and stopped.endswith("run the same command with --retry_failed")
    folder = run_dir / "sweeps" / "search"
    states = [t.state for t in journal_study(folder).get_trials()]
    assert states.count(TrialState.FAIL) == 3 and TrialState.COMPLETE not in states

    # The same command after the fix leaves failed trials failed, and says how to rerun them.
    shutil.copy(digits_root / "images" / broken.name, broken)
    output = communicate(start_sweep(args, cwd=run_dir))
    assert "add --retry_failed to run them again" in output
    # --retry_failed queues each failed trial again with its values: all 5 complete.
    output = communicate(start_sweep([*args, "--retry_failed"], cwd=run_dir))
    assert "--retry_failed: 3 failed trials queued again" in output
    assert "Study search: 5 complete, 0 pruned, 0 failed, 0 to go" in output, output
    trials = journal_study(folder).get_trials()
    retries = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    for number, retry in retries.items():
        assert trials[number].state == TrialState.FAIL and retry.state == TrialState.COMPLETE
        assert retry.params == trials[number].params


# -- cross-validation ------------------------------------------------------------------------
@pytest.mark.slow
def test_cross_validation_of_an_own_module(run_dir: Path, digits_root: Path) -> None:
    from sweeps.train_config import datamodule_from

    (run_dir / "my_pkg.py").write_text(MY_MODULE)
    data = ["--data=datamodules.image_csv.ImageCSVDataModule",
            f"--data.init_args.annotations={digits_root / 'labels.csv'}",
            "--data.init_args.read_mode=GRAY", "--data.init_args.num_workers=0"]
    output = communicate(start_sweep(
        [*data, "--model=my_pkg.MyModule", "--checkpoint.monitor=val_acc",
         "--checkpoint.mode=max", "--max_epochs=2", "--trainer.limit_train_batches=10",
         "--folds=3", "--dir", "sweeps"], cwd=run_dir, extra_path=run_dir))
    folder = run_dir / "sweeps" / "cv3"
    runs = sorted((folder / "trial_0000").glob("fold_*"))
    assert [run.name for run in runs] == ["fold_0", "fold_1", "fold_2"]

    # Each fold's own saved config gives the rows it validated and tested on.
    val, test = [], []
    for run in runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        datamodule = datamodule_from(config["data"])
        datamodule.setup("fit")
        val.append(set(datamodule.split_tables["val"]["path"]))
        test.append(set(datamodule.split_tables["test"]["path"]))
    assert max(map(len, val)) - min(map(len, val)) <= 1
    assert not (val[0] & val[1] or val[0] & val[2] or val[1] & val[2])
    assert test[0] == test[1] == test[2] and not test[0] & set().union(*val)
    parts = pd.read_csv(folder / "folds.csv")
    assert set(parts[parts.part == "test"].path) == test[0]
    for fold in range(3):
        assert set(parts[parts.part == str(fold)].path) == val[fold]

    scores = [json.loads((run / "summary.json").read_text())["best_score"] for run in runs]
    mean, std = np.mean(scores), np.std(scores, ddof=1)
    assert f"{mean:.4f} ± {std:.4f}" in output
    assert "fold 2" in output
