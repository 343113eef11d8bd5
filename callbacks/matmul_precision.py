"""Set ``torch.set_float32_matmul_precision`` from the config."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class MatmulPrecision(Callback):
    """Let float32 matrix multiplications (and cuDNN convolutions) use TF32 tensor cores.

    The Trainer has no option for it, and it must be set in every process (each DDP rank runs
    callbacks' ``setup``). ``high`` uses TF32 on Ampere and newer NVIDIA GPUs: several times
    faster float32 matmuls with a 10-bit mantissa, which does not hurt training in practice;
    ``medium`` allows bfloat16 internally; ``highest`` is PyTorch's default, full float32. On
    CPU and under 16-bit ``precision`` it changes nothing that matters. The previous value is
    restored when the run ends, so tests and notebooks are not affected afterwards.
    """

    def __init__(self, precision: Literal["highest", "high", "medium"] = "high") -> None:
        self.precision = precision
        self._previous: str | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.precision)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous is not None:
            torch.set_float32_matmul_precision(self._previous)
            self._previous = None
