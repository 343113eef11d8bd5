"""What a checkpoint records about the training data, so that a resumed run continues the same
draw or refuses in one line.

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

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
from torchdata.stateful_dataloader import StatefulDataLoader

from errors import DataError


class ResumableLoader(StatefulDataLoader):
    """torchdata's ``StatefulDataLoader``, which records the position of the last batch handed to
    training (not of those its workers prefetched), with a switch to ignore a loaded state.

    A run resumed from an epoch-end checkpoint starts a new epoch and needs no position.
    Lightning restores the finished epoch's state anyway, and that state may come from another
    number of workers or processes, which ``StatefulDataLoader`` cannot load.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accept_loaded_state = True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.accept_loaded_state:
            super().load_state_dict(state_dict)


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
    digest = hashlib.sha256(b"".join(c.tobytes() for c in columns))
    return digest.hexdigest()[:12]


def training_data_settings(source: str, train_table: pd.DataFrame, sampler: str,
                           sampler_options: dict[str, Any], seed: int, batch_size: int,
                           processes: int, num_workers: int) -> dict[str, Any]:
    """The settings a training epoch's sequence of batches depends on, as plain values."""
    return {
        "data": source,
        "training rows": len(train_table),
        "training split": table_fingerprint(train_table),
        "sampler": sampler,
        **{f"sampler {name}": value for name, value in sampler_options.items()},
        "seed": seed,
        "batch_size": batch_size,
        "processes": processes,
        "num_workers": num_workers,
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
