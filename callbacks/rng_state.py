"""The random generators' states in every checkpoint, so that a resumed run draws (dropout
masks, random augmentations) what the uninterrupted run would have: Lightning does not save
them. The data order has generators of its own, seeded per epoch (datamodules.samplers)."""

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class RNGState(Callback):
    """Saves torch's (CPU and this process's CUDA device), numpy's and Python's generator states
    in each checkpoint as tensors and plain values (loadable with ``weights_only=True``, which
    refuses numpy's arrays) and restores them when the resumed fit starts training: after the
    sanity check, which must not shift what training draws."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, key, pos, has_gauss, gauss = np.random.get_state()
        version, python_state, gauss_next = random.getstate()
        state = {"torch": torch.get_rng_state(),
                 "numpy": {"bit_generator": kind, "key": key.tolist(), "pos": pos,
                           "has_gauss": has_gauss, "gauss": gauss},
                 "python": [version, list(python_state), gauss_next]}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict or None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._loaded is None:
            return
        state, self._loaded = self._loaded, None
        torch.set_rng_state(state["torch"].cpu())
        numpy = state["numpy"]
        np.random.set_state((numpy["bit_generator"], np.asarray(numpy["key"], dtype=np.uint32),
                             numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
        version, python_state, gauss_next = state["python"]
        random.setstate((version, tuple(python_state), gauss_next))
        if "cuda" in state and torch.cuda.is_available():
            # Every DDP rank is seeded alike, so rank 0's state (the one saved) is every rank's.
            torch.cuda.set_rng_state(state["cuda"].cpu())
