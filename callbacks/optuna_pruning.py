"""Report a run's validation metric to its Optuna trial each epoch, and stop the run when the
study's pruner says the trial is not worth finishing.

``sweep.py`` runs each trial as its own ``train.py`` process and adds this callback to it. It
fills a gap of optuna-integration's ``PyTorchLightningPruningCallback``: that one needs the
``Trial`` object of the process that calls ``study.optimize`` and raises ``TrialPruned`` out of
``fit`` (a traceback and a failed run here); under DDP it needs a database storage. This one
finds its trial in the study's storage by number, so it works in a separate process, with the
journal file as well as a database, and under DDP: rank 0 reports and asks the pruner, every
rank gets its answer, and all of them stop together at the end of the epoch, like a run that
reached ``max_epochs``. The pruning is recorded in the trial (user attribute
``pruned_at_epoch``), where ``sweep.py`` reads it. The trial is found through the storage's
own methods and made with ``optuna.Trial(study, trial_id)``, as ``Study.ask`` makes it: see
:mod:`sweeps.study` for why those are used.
"""

import math
from pathlib import Path

import optuna
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from sweeps.study import open_storage


class OptunaPruning(Callback):
    """Args:
        storage: the study's storage: a database URL or journal:PATH (a journal file)
            (:func:`sweeps.study.open_storage`).
        study_name / trial: the study and the number of the trial this run is.
        monitor: the validation metric reported (the trial's objective).
        pruner: decides from the reports of all trials; Optuna's ``MedianPruner`` by default.

    A run started again by hand from its ``command.txt`` or ``config.yaml`` after its trial
    ended (or with the study gone) reports nothing and is never stopped by it: it says so and
    trains as it would without this callback.
    """

    def __init__(self, storage: str, study_name: str, trial: int, monitor: str,
                 pruner: optuna.pruners.BasePruner | None = None) -> None:
        self.storage = storage
        self.study_name = study_name
        self.trial_number = trial
        self.monitor = monitor
        self.pruner = pruner if pruner is not None else optuna.pruners.MedianPruner()
        self.pruned_at_epoch: int | None = None
        self._trial: optuna.Trial | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.is_global_zero and stage == "fit":
            self._trial = self.running_trial()

    def running_trial(self) -> optuna.Trial | None:
        """This run's trial if it is still running in its study, else None (said in a line)."""
        where = f"trial {self.trial_number} of study {self.study_name!r}"
        journal = self.storage.removeprefix("journal:") if self.storage.startswith(
            "journal:") else None
        if journal is not None and not Path(journal).is_file():
            rank_zero_info(f"{where}: no study at {self.storage}; this run reports to no study.")
            return None
        storage = open_storage(self.storage)
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(self.study_name), self.trial_number)
        except KeyError:
            rank_zero_info(f"{where} does not exist; this run reports to no study.")
            return None
        state = storage.get_trial(trial_id).state
        if state != optuna.trial.TrialState.RUNNING:
            rank_zero_info(f"{where} has ended ({state.name.lower()}); this run reports "
                           "nothing to it.")
            return None
        study = optuna.load_study(study_name=self.study_name, storage=storage,
                                  pruner=self.pruner)
        return optuna.Trial(study, trial_id)  # as Study.ask makes it (see sweeps.study)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        prune = False
        if self._trial is not None:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                self._trial.report(float(value), trainer.current_epoch)
                prune = self._trial.should_prune() or not math.isfinite(float(value))
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at_epoch = trainer.current_epoch
            trainer.should_stop = True
            if self._trial is not None:
                self._trial.set_user_attr("pruned_at_epoch", trainer.current_epoch)
            rank_zero_info(f"Optuna pruned trial {self.trial_number} after epoch "
                           f"{trainer.current_epoch}: {self.monitor} is worse than the pruner "
                           "allows at this point; the run stops here.")
