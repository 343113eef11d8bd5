"""Set ``torch.set_float32_matmul_precision`` from the config."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class MatmulPrecision(Callback):
    """Let float32 matrix multiplications use TF32 tensor cores (cuDNN convolutions already do,
    by PyTorch's default).

    The Trainer has no option for it, and it must be set in every process (each DDP rank builds
    its callbacks). ``high`` uses TF32 on Ampere and newer NVIDIA GPUs: several times faster
    float32 matmuls with a 10-bit mantissa, which does not hurt training in practice; ``medium``
    allows bfloat16 internally; ``highest`` is PyTorch's default, full float32. On CPU and under
    16-bit ``precision`` it changes nothing that matters.

    Applied when the callback is built, not only in ``setup``: Lightning looks at the setting
    while it sets up the GPU, before any callback hook, and otherwise advises every run to set
    it. The previous value is restored when the run ends or raises (and applied again by a later
    run's ``setup``), so tests and notebooks are not affected afterwards; a callback built but
    never run by a Trainer leaves the setting applied.
    """

    def __init__(self, precision: Literal["highest", "high", "medium"] = "high") -> None:
        self.precision = precision
        self._previous: str | None = None
        self._apply()

    def _apply(self) -> None:
        if self._previous is None:
            self._previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.precision)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._apply()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        self._restore()  # Lightning skips teardown when a run raises

    def _restore(self) -> None:
        if self._previous is not None:
            torch.set_float32_matmul_precision(self._previous)
            self._previous = None
