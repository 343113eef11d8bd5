"""Learning-rate schedules stepped after every optimizer step, sized from the trainer.

Each schedule is a closed form of the step count (LR = base LR x ``factor(step)``), so it is
exact on any step, resumes from a checkpoint by its step count alone, and can be checked against
its formula in tests. ``ImageClassifier`` passes ``total_steps=trainer.estimated_stepping_batches``
when the config leaves it unset, so lengths are right for any devices, accumulation, limits or
``max_steps``.

``warmup`` is a number of steps when given as an int (``warmup: 500``) and a fraction of
``total_steps`` when given as a float (``warmup: 0.05``). Step numbers below are 1-based: step
``k`` is the ``k``-th optimizer step of the run.
"""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def warmup_steps(warmup: int | float, total_steps: int, owner: str) -> int:
    """An int is a number of steps, a float a fraction of ``total_steps``."""
    if isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"{owner}: warmup must be a non-negative int or a float in [0, 1)")
    if isinstance(warmup, int):
        return warmup
    if not 0.0 <= warmup < 1.0:
        raise ValueError(
            f"{owner}: warmup={warmup} is a float, read as a fraction of total_steps, so it must "
            "be in [0, 1). Give an int for a number of steps."
        )
    return round(warmup * total_steps)


def required_total_steps(total_steps: int | None, owner: str) -> int:
    if total_steps is None:
        raise ValueError(
            f"{owner} decays to its final LR on the last step, so it needs total_steps, and the "
            "training length is unknown (infinite training): set trainer.max_steps or "
            "trainer.max_epochs."
        )
    if total_steps < 1:
        raise ValueError(f"{owner}: total_steps must be >= 1, got {total_steps}")
    return total_steps


class FactorSchedule(LRScheduler):
    """LR of every param group = its base LR x ``factor(step)``, ``step`` counting optimizer
    steps from 0 (the step about to be taken).

    A closed form instead of PyTorch's chainable (multiply-the-last-LR) form: no drift from
    accumulated rounding and nothing but ``last_epoch`` to restore on resume.
    """

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:  # type: ignore[override]
        scale = self.factor(self.last_epoch)
        return [base_lr * scale for base_lr in self.base_lrs]


class WarmupDecay(FactorSchedule):
    """Linear warmup to the base LR, then a decay (``decay(progress)``, 1 -> 0) that reaches
    ``min_lr_ratio`` x base LR exactly on the last step.

    Warmup steps ``1..W`` use ``k / W`` of the peak, so step ``W`` is the first at the peak and no
    step is wasted at LR 0. The decay runs from the peak step to step ``total_steps``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None = None,
        warmup: int | float = 0.05,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        name = type(self).__name__
        self.total_steps = required_total_steps(total_steps, name)
        self.warmup_steps = warmup_steps(warmup, self.total_steps, name)
        if self.warmup_steps > self.total_steps:
            raise ValueError(
                f"{name}: warmup ({self.warmup_steps} steps) is longer than the whole schedule "
                f"({self.total_steps} steps)"
            )
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def decay(self, progress: float) -> float:
        raise NotImplementedError

    def factor(self, step: int) -> float:
        if step < self.warmup_steps - 1:
            return (step + 1) / self.warmup_steps
        peak = max(self.warmup_steps - 1, 0)
        span = self.total_steps - 1 - peak
        # After the last step Lightning steps the schedule once more; stay at the final LR.
        progress = min((step - peak) / span, 1.0) if span > 0 else 0.0
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * self.decay(progress)


class WarmupCosineLR(WarmupDecay):
    """Linear warmup, then half a cosine down to ``min_lr_ratio`` x base LR.

    The usual recipe for AdamW/SGD from scratch: warmup keeps early, badly-scaled updates small
    (Adam's second-moment estimate is still poor), and the cosine spends most steps near the
    peak, then anneals smoothly, which beats step decay without choosing milestones.
    """

    def decay(self, progress: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupLinearLR(WarmupDecay):
    """Linear warmup, then a straight line down to ``min_lr_ratio`` x base LR: BERT's schedule,
    common for fine-tuning where a fixed budget of steps is known in advance."""

    def decay(self, progress: float) -> float:
        return 1.0 - progress
