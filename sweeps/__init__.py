"""What ``sweep.py`` is made of, one job per module:

- ``search_space``: the search space YAML, as Optuna distributions;
- ``train_config``: what train.py would run (its own parser checks every option and value);
- ``study``: the Optuna study, its queue of planned trials, and trials a stopped sweep left;
- ``runner``: worker threads that run each trial as train.py processes;
- ``report``: the tables, ``best_config.yaml`` and the plots at the end.
"""


class SweepError(Exception):
    """Bad options or search space: reported in one line, exit 2, before anything is written."""
