"""What a sweep shows when it ends: the table of trials, the best trial's metrics (per fold and
as mean ± std with ``--folds``) and run folder; ``trials.csv``, ``best_config.yaml`` and the
plots in the study folder."""

import os
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from sweeps.runner import Sweep, short, short_names
from sweeps.search_space import command_line_value
from sweeps.study import current_trials
from sweeps.train_config import resolved_config


def report(sweep: Sweep) -> bool:
    """The table of trials, the best trial's metrics and run folder (per fold with --folds);
    trials.csv, best_config.yaml and the plots in the study folder."""
    from rich.console import Console

    study, folder, monitor = sweep.study, sweep.folder, sweep.monitor
    trials = current_trials(study)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    console = Console()
    console.print(f"Study {study.study_name}: {count[TrialState.COMPLETE]} complete, "
                  f"{count[TrialState.PRUNED]} pruned, {count[TrialState.FAIL]} failed, "
                  f"{count[TrialState.RUNNING] + count[TrialState.WAITING]} to go",
                  highlight=False)
    if sweep.space:  # cross-validation alone has one trial: the table below says it all
        console.print(trials_table(trials, sweep.space, monitor, maximize))
    frame = study.trials_dataframe()
    frame.to_csv(folder / "trials.csv", index=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if count[TrialState.FAIL]:
        print(f"{count[TrialState.FAIL]} failed trials are not run again by the same command; "
              "add --retry_failed to run them again (after fixing what the table says)",
              flush=True)
    if not complete:
        print(f"No trial completed. Runs and their train.log: {folder}", flush=True)
        return False
    best = study.best_trial
    console.print(best_table(best, sweep))
    print(f"Best run folder: {best.user_attrs.get('run_folder')}", flush=True)
    if sweep.space:
        write_best_config(best, sweep)
        save_plots(study, folder)
    logger = str((sweep.config["trainer"].get("logger") or {}).get("class_path", ""))
    watch = f"; tensorboard --logdir {folder}" if logger.endswith("TensorBoardLogger") else ""
    print(f"Study folder: {folder} (trials.csv"
          + (", best_config.yaml, *.png)" if sweep.space else ")") + watch, flush=True)
    return True


def trials_table(trials: list[optuna.trial.FrozenTrial], space: dict[str, Any], monitor: str,
                 maximize: bool) -> Any:
    """One row per trial: complete ones best first, then the others (a failed one's reason)."""
    from rich.table import Table

    table = Table(caption=f"{'highest' if maximize else 'lowest'} {monitor} first",
                  caption_justify="left")
    for column in ("trial", "state", monitor, *short_names(space)):
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
                      *(short(t.params.get(name, "")) for name in space))
    return table


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
              + (f"\n# The trials ran {sweep.options.jobs} at a time with fewer CPU threads "
                 "each (OMP_NUM_THREADS): another thread count may change the last digits."
                 if sweep.options.jobs > 1 else "")
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
