"""What a checkpoint records about the training data, so that a resumed run continues the same
draw or refuses in one line. Imported when a checkpoint is saved or resumed.

Two gaps this fills:

* **Lightning #20550.** Lightning restores the training loader's position from the fit loop's
  checkpoint state, but drops it when ``configure_optimizers`` asks for
  ``trainer.estimated_stepping_batches`` (OneCycle does), which builds the loader before the
  restore. The datamodule's own state is restored earlier, before any loader exists, so the
  loader's state is also kept there and handed to the loader when it is built.
  (Strategies that restore after setup, such as FSDP and DeepSpeed, restore the datamodule
  after ``configure_optimizers``: not covered.)
* **A checkpoint from other data.** Lightning resumes any checkpoint into any data: a
  different table, split, sampler or seed would continue a sequence of batches that does not
  exist. The checkpoint records the settings that sequence depends on, and a resume compares
  them first.
"""

import hashlib
from typing import Any

import numpy as np
import pandas as pd
from lightning.pytorch import Trainer
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules.base import global_seed
from errors import DataError


def resume_state(data: Any, loader: StatefulDataLoader) -> dict[str, Any]:
    """What ``data`` (a TableDataModule) saves in a checkpoint taken while fitting."""
    state: dict[str, Any] = {"training_data": resume_settings(data),
                             "train_loader": loader.state_dict()}
    state["inside_epoch"], state["resume_epoch"] = resume_point(data.trainer)
    return state


def restore_resume_state(data: Any, state: dict[str, Any]) -> None:
    """Check a fit's checkpoint against ``data`` (a TableDataModule) and keep what its training
    loader resumes from."""
    check_resumable(state["training_data"], resume_settings(data), mid_epoch=state["inside_epoch"])
    data._resume_inside = state["inside_epoch"]
    data._train_loader_state = state["train_loader"] if data._resume_inside else None
    data._resume_epoch = state["resume_epoch"]


def resume_settings(data: Any) -> dict[str, Any]:
    """What this run's sequence of training batches depends on, worked out once (it hashes
    the training split)."""
    if data._resume_settings is None:
        data._resume_settings = training_data_settings(data)
    return data._resume_settings


def resume_point(trainer: Trainer) -> tuple[bool, int]:
    """Whether a checkpoint taken now is inside an epoch, and the epoch a run resumed from
    it continues in. Lightning counts an epoch as processed just before
    ``on_train_epoch_end`` (after its last batch and validation); after the last epoch
    that count is the final one."""
    batches = trainer.fit_loop.epoch_loop.batch_progress
    # The last batch is fetched (is_last_batch) before it trains: stopped in it, still inside.
    if not batches.is_last_batch or batches.current.completed < batches.current.ready:
        return True, trainer.current_epoch
    epochs = trainer.fit_loop.epoch_progress.current  # (FitLoop.done would change them)
    if trainer.max_epochs not in (None, -1) and epochs.processed >= trainer.max_epochs:
        return False, epochs.processed
    return False, epochs.completed + 1


def table_fingerprint(table: pd.DataFrame) -> str:
    """A short hash of the rows (values and order): equal for the same training split.
    Cells pandas cannot hash (arrays in a DataFrame column) are hashed by their bytes."""
    columns = []
    for name in table.columns:
        try:
            column = pd.util.hash_pandas_object(table[name], index=False)
        except TypeError:
            column = table[name].map(
                lambda v: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest())
            column = pd.util.hash_pandas_object(column, index=False)
        columns.append(column.to_numpy())
    return hashlib.sha256(b"".join(c.tobytes() for c in columns)).hexdigest()[:12]


def training_data_settings(data: Any) -> dict[str, Any]:
    """The settings a training epoch's sequence of batches depends on, as plain values."""
    train = data.split_tables["train"]
    options = {"weighted": {"weight_column": data.weight_column},
               "subset_random": {"subset_fraction": data.subset_fraction}}.get(data.sampler, {})
    return {
        "data": data.source,
        "training rows": len(train),
        "training split": table_fingerprint(train),
        "sampler": data.sampler,
        **{f"sampler {name}": value for name, value in options.items()},
        "seed": global_seed(),
        "batch_size": data.batch_size,
        "processes": data.trainer.world_size if data.trainer else 1,
        "num_workers": data.loader_workers(),
    }


# Must match for any resume: another table, split or sampler is another sequence of batches.
# The file's path may change (data moved to another disk); its content may not.
SAME_DATA = ("training rows", "training split", "sampler")
# Must match to continue inside an epoch: the saved position (batches handed out, the same
# count on every rank) indexes this seed's order, in batches of this size, sharded over this
# many processes and made by this many loader workers. At an epoch boundary they may change.
SAME_POSITION = ("seed", "batch_size", "processes", "num_workers")


def check_resumable(saved: dict[str, Any], now: dict[str, Any], mid_epoch: bool) -> None:
    """Raise a one-line :class:`DataError` naming what differs between the checkpoint's
    settings and this run's."""
    data_keys = [k for k in saved if k in SAME_DATA or k.startswith("sampler ")]
    keys = data_keys + (list(SAME_POSITION) if mid_epoch else [])
    differ = [k for k in keys if saved.get(k) != now.get(k)]
    if not differ:
        return
    changes = "; ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in differ)
    if any(k in data_keys for k in differ):
        raise DataError(f"--ckpt_path: the checkpoint was trained on other data or another "
                        f"sampler (checkpoint -> now: {changes})")
    raise DataError(f"--ckpt_path: the checkpoint stopped inside an epoch, which can only "
                    f"continue with the same settings (checkpoint -> now: {changes}); pass "
                    f"the checkpoint's values or resume from an epoch-end checkpoint")
