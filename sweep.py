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

import argparse
import signal
import sys
from pathlib import Path

from sweeps import SweepError


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
    parser.add_argument("--storage", help="Optuna storage shared by several machines: a "
                                          "database URL (postgresql://...) or journal:PATH; "
                                          "default: journal:<study folder>/study.journal")
    parser.add_argument("--pruner", choices=("median", "none"), default="median",
                        help="stop trials whose metric is worse than the median at that epoch")
    parser.add_argument("--startup_trials", type=int, default=5,
                        help="trials that finish before the pruner stops any (default 5)")
    parser.add_argument("--warmup_epochs", type=int, default=1,
                        help="epochs of each trial never pruned (default 1); with --folds, "
                             "trials are pruned in their first fold only")
    parser.add_argument("--retry_failed", action="store_true",
                        help="run the study's failed trials again, with their values (the same "
                             "command without it leaves them failed)")
    parser.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    parser.add_argument("--sampler_seed", type=int, default=None,
                        help="seeds the process that creates the study (others draw their own)")
    options, train_args = parser.parse_known_args(argv)
    if train_args and train_args[0] in ("fit", "validate", "test", "predict"):
        raise SweepError(f"sweep.py runs train.py fit itself; drop {train_args[0]!r}")
    if options.search is None and options.folds is None:
        raise SweepError("nothing to do: give --search (a sweep) and/or --folds (cross-validation)")
    if options.folds is not None and options.folds < 2:
        raise SweepError(f"--folds {options.folds}: cross-validation needs at least 2 folds")
    if options.search is None and options.trials not in (None, 1):
        raise SweepError(f"--trials {options.trials} without --search: every trial would be "
                         "the same run")
    if options.trials is None:
        options.trials = 20 if options.search else 1
    if options.trials < 1 or options.jobs < 1:
        raise SweepError("--trials and --jobs must be at least 1")
    if options.startup_trials < 0 or options.warmup_epochs < 0:
        raise SweepError("--startup_trials and --warmup_epochs cannot be negative")
    if options.name is None:
        options.name = options.search.stem if options.search else f"cv{options.folds}"
    options.folder = (options.dir / options.name).resolve()
    options.storage_spec = options.storage or f"journal:{options.folder / 'study.journal'}"
    return options, train_args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        options, train_args = parse_options(argv)
    except SweepError as error:
        sys.stderr.write(f"sweep.py: error: {error}\n")
        return 2
    try:
        import optuna
    except ImportError:
        sys.stderr.write('sweep.py: error: sweeps need Optuna: pip install -e ".[sweep]"\n')
        return 2
    from sweeps.report import report
    from sweeps.runner import GIVE_UP_AFTER, Sweep
    from sweeps.search_space import SearchSpaceError, load_search_space
    from sweeps.study import masked, open_storage, open_study, retry_failed_trials
    from sweeps.train_config import check_options, fold_table

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        space = load_search_space(options.search) if options.search else {}
        config = check_options(options, train_args, space)
        folds = fold_table(config, options.folds) if options.folds else None
        # A database is opened before anything is written; the journal file is written here.
        if options.storage:
            storage = open_storage(options.storage_spec)
        options.folder.mkdir(parents=True, exist_ok=True)
        if not options.storage:
            storage = open_storage(options.storage_spec)
        # What a study is: a rerun with other settings would mix two experiments in one study.
        settings = {"config": config, "folds": options.folds, "pruner": options.pruner,
                    "space": {n: optuna.distributions.distribution_to_json(d)
                              for n, d in space.items()}}
        direction = "maximize" if config["checkpoint"].get("mode") == "max" else "minimize"
        study = open_study(options, storage, settings, direction)
    except (SweepError, SearchSpaceError) as error:
        sys.stderr.write(f"sweep.py: error: {error}\n")
        return 2
    if folds is not None:
        folds.to_csv(options.folder / "folds.csv", index=False)
    sweep = Sweep(options, train_args, space, config, storage, study)
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:  # nohup'd or background: leave it
        signal.signal(signal.SIGINT, sweep.stop)
    signal.signal(signal.SIGTERM, sweep.stop)
    print(f"Study {options.name!r} in {masked(options.storage_spec)}: "
          f"{study.user_attrs['planned']} trials planned, {options.jobs} at a time here; runs "
          f"in {options.folder}", flush=True)
    if options.retry_failed:
        print(f"--retry_failed: {retry_failed_trials(study)} failed trials queued again",
              flush=True)
    sweep.run()
    if sweep.gave_up is not None:
        print(f"sweep.py: error: the first {GIVE_UP_AFTER} trials failed the same way, so the "
              f"sweep stopped: {sweep.gave_up}. Fix it, then run the same command with "
              "--retry_failed", file=sys.stderr)
        return 1
    if sweep.stopped_by is not None:
        print("sweep.py: stopped; the same command continues the study", file=sys.stderr)
        return 128 + sweep.stopped_by
    return 0 if report(sweep) else 1


if __name__ == "__main__":
    sys.exit(main())
