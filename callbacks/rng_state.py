"""The random-number generators' state in every checkpoint, so a resumed run draws what the
uninterrupted run would have drawn.

Lightning saves weights, optimizer, schedule and loop position but not the RNG states: a run
resumed at an epoch boundary starts from ``seed_everything``'s fresh state, so its dropout masks
and random batch augmentations differ from the uninterrupted run's, and so do its final weights.
This callback
records torch's CPU generator, the current CUDA device's generator, numpy's and Python's global
generators in the checkpoint and puts them back when training starts.

The states are stored as a tensor and plain lists/ints: checkpoints stay loadable with
``torch.load(..., weights_only=True)``, which rejects numpy's state tuple (an ndarray inside).

The data side is covered elsewhere: the training sampler draws its order and a seed per sample
from (seed, epoch) (:mod:`datamodules.samplers`) and the loaders have their own generator, so
neither depends on these global states, on loader worker processes or on their lifetime.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def capture_rng_state() -> dict[str, Any]:
    """The global generators' state as tensors and plain Python values."""
    numpy_state = np.random.get_state(legacy=False)
    version, python_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": numpy_state["state"]["key"].tolist(),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": [version, list(python_state), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`: every generator continues where it was saved."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state({
        "bit_generator": numpy_state["bit_generator"],
        "state": {"key": np.asarray(numpy_state["key"], dtype=np.uint32),
                  "pos": numpy_state["pos"]},
        "has_gauss": numpy_state["has_gauss"],
        "gauss": numpy_state["gauss"],
    })
    version, python_state, gauss_next = state["python"]
    random.setstate((version, tuple(python_state), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        # Every DDP rank is seeded alike, so rank 0's state (the one saved) is every rank's.
        torch.cuda.set_rng_state(state["cuda"].cpu())


class RNGState(Callback):
    """Saves the RNG states in each checkpoint and restores them when a resumed fit starts.

    The restore happens in ``on_train_start``, not when the checkpoint is loaded: in between,
    Lightning may run the validation sanity check, which must not shift what training draws.
    ``train.py`` always adds this callback.
    """

    def __init__(self) -> None:
        self._loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture_rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict or None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._loaded is not None:
            restore_rng_state(self._loaded)
            self._loaded = None
