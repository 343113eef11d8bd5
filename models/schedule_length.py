"""The one line for a schedule whose length the run cannot give (imported on that error)."""

from collections.abc import Callable
from typing import Any

from errors import DataError


def unknown_length(factory: Callable[..., Any], total: Any) -> ValueError:
    """For a schedule needing ``total_steps`` in a run of no finite length."""
    # The class behind jsonargparse's partial: its ``func``, or in ``args`` (>= 4.40).
    wrapped = [factory] if isinstance(factory, type) else [
        getattr(factory, "func", None), *getattr(factory, "args", ())]
    name = next((c.__name__ for c in wrapped if isinstance(c, type)), "The scheduler")
    return ValueError(f"{name} needs a finite number of steps but training length is "
                      f"{total}: set trainer.max_epochs or trainer.max_steps.")


def resumed_length_differs(schedule: Any, loaded: int, expected: int) -> DataError:
    """For a resumed schedule built for another length than this run's."""
    return DataError(
        f"the checkpoint's {type(schedule).__name__} spans {loaded} steps but "
        f"this run has {expected} (max_epochs, max_steps, devices, batch size or "
        "accumulation changed): resume with the original settings, or start a new "
        "run from its weights (callbacks.initial_weights.InitialWeights)")
