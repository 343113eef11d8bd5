"""The one-line error for training and evaluation transforms that normalise differently;
imported only then."""

from typing import Any

from torch import nn
from torchvision.transforms import v2

from errors import DataError

OPTIONS = {"training": "train_transforms / train_batch_transforms",
           "evaluation": "eval_transforms / eval_batch_transforms"}


def refuse_normalise_mismatch(owner: str, steps: dict[str, list[Any]],
                              found: dict[str, list[str]]) -> None:
    """Raise, naming both sides' ``Normalize`` (``found``). A side without one that holds a step
    of the user's own (which may normalise in its code) is not judged."""
    for has, lacks in (("training", "evaluation"), ("evaluation", "training")):
        if found[has] and not found[lacks]:
            if not all(type(step).__module__.startswith("torchvision.")
                       or isinstance(step, (nn.Identity, v2.Normalize)) for step in steps[lacks]):
                return
            raise DataError(
                f"{owner}: the {has} transforms normalise ({', '.join(found[has])}) but the "
                f"{lacks} ones do not, so {lacks} would see images on another scale; add the "
                f"same Normalize to {OPTIONS[lacks]}, or remove it from {OPTIONS[has]}")
    raise DataError(f"{owner}: training normalises with {', '.join(found['training'])} but "
                    f"evaluation with {', '.join(found['evaluation'])}; give both the same "
                    "mean and std")
