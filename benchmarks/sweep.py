"""What ``--jobs 2`` buys on this machine: the wall time of the same sweep of the default run
run by one worker and by two, and the share of trials the median pruner stopped.

    python benchmarks/sweep.py [--trials 10] [--repeats 2] [--search configs/search/digits.yaml]

Each variant is the real command, ``python sweep.py --search ... --trials N --jobs J``, in a
fresh folder (a new study: no trial is shared), timed from start to exit (start-up, every
trial's train.py process, the report and plots). The default pruner and a fixed sampler seed;
with two workers the trials are sampled in another order, so their values, and the pruned share,
differ a little. The variants alternate within each round, which one goes first alternating
between rounds; the ratio is the median of the per-round ratios.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from overhead import paired_ratio  # noqa: E402


def sweep_once(workdir: Path, search: Path, trials: int, jobs: int) -> tuple[float, float]:
    """Seconds, and the share of finished trials that were pruned."""
    folder = Path(tempfile.mkdtemp(dir=workdir))
    command = [sys.executable, str(REPO / "sweep.py"), "--search", str(search),
               f"--trials={trials}", f"--jobs={jobs}", "--sampler_seed=0", "--dir",
               str(folder), "--name=bench", "--data.init_args.root", str(workdir / "digits")]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stdout[-2000:] + result.stderr[-2000:])
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(folder / "bench" / "study.journal")))
    states = [t.state for t in optuna.load_study(study_name="bench", storage=storage).trials]
    return seconds, states.count(optuna.trial.TrialState.PRUNED) / len(states)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--search", type=Path, default=REPO / "configs/search/digits.yaml")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sys.path.insert(0, str(REPO))
    from datamodules.digits import write_digits

    results: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as workdir:
        write_digits(Path(workdir) / "digits")  # once, outside the timings
        for round_ in range(args.repeats):
            for jobs in (1, 2) if round_ % 2 == 0 else (2, 1):
                results[jobs].append(sweep_once(Path(workdir), args.search.resolve(),
                                                args.trials, jobs))
                print(f"round {round_ + 1}/{args.repeats}, --jobs {jobs}: "
                      f"{results[jobs][-1][0]:.1f} s", file=sys.stderr, flush=True)
    seconds = {jobs: [r[0] for r in runs] for jobs, runs in results.items()}
    ratio = paired_ratio(seconds, 1, 2)
    print(f"{args.trials}-trial sweep of the default run ({args.search.name}), {args.repeats} "
          "alternating rounds; times: median over rounds")
    print("| workers | wall time | per trial | pruned |")
    print("| --- | ---: | ---: | ---: |")
    for jobs, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        pruned = statistics.mean(r[1] for r in runs)
        print(f"| --jobs {jobs} | {seconds:.0f} s | {seconds / args.trials:.1f} s | "
              f"{pruned:.0%} |")
    print(f"\n--jobs 1 / --jobs 2 wall time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
