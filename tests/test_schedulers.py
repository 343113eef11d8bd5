"""models/schedulers.py on its own: argument checks and resuming (the real-fit checks of every
schedule against its formula are in test_optimization.py)."""

import pytest
import torch
from torch import nn

from models.schedulers import WarmupCosineLR, WarmupLinearLR


def sgd(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=lr)


def lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_without_warmup_the_decay_starts_at_the_peak_and_ends_at_the_minimum() -> None:
    cosine = lrs(WarmupCosineLR(sgd(), total_steps=5, warmup=0, min_lr_ratio=0.1), 5)
    linear = lrs(WarmupLinearLR(sgd(), total_steps=5, warmup=0), 5)

    assert cosine[0] == pytest.approx(1.0) and cosine[-1] == pytest.approx(0.1)
    assert linear == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_stepping_past_the_end_stays_at_the_final_lr() -> None:
    scheduler = WarmupLinearLR(sgd(), total_steps=3, warmup=1, min_lr_ratio=0.2)
    assert lrs(scheduler, 5)[2:] == pytest.approx([0.2, 0.2, 0.2])


def test_a_resumed_schedule_continues_where_it_stopped() -> None:
    first = WarmupCosineLR(sgd(), total_steps=10, warmup=3)
    expected = lrs(WarmupCosineLR(sgd(), total_steps=10, warmup=3), 10)
    lrs(first, 4)
    # Lightning's order: build both from the config, then load the checkpoint's states.
    resumed = WarmupCosineLR(sgd(), total_steps=10, warmup=3)
    resumed.optimizer.load_state_dict(first.optimizer.state_dict())
    resumed.load_state_dict(first.state_dict())

    assert lrs(resumed, 6) == pytest.approx(expected[4:])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: WarmupCosineLR(sgd(), total_steps=10, warmup=1.5), r"must be in \[0, 1\)"),
        (lambda: WarmupCosineLR(sgd(), total_steps=10, warmup=11), "longer than the whole"),
        (lambda: WarmupLinearLR(sgd(), total_steps=None), "needs total_steps"),
        (lambda: WarmupCosineLR(sgd(), total_steps=10, warmup=-3), "non-negative"),
    ],
    ids=["fraction-over-1", "warmup-too-long", "no-length", "negative"],
)
def test_a_schedule_that_cannot_be_built_says_why(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]

