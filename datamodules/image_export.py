"""What a model exported without this code needs to know about its image inputs: the read mode,
the input shape after the eval transforms, per image and per batch (e.g. 1x12x12 for 8x8 digits
padded by 2), and the normalisation. Saved in checkpoints by
:class:`~callbacks.preprocessing_metadata.PreprocessingMetadata`."""

import logging
from typing import Any

from torchvision.transforms import v2

from datamodules.base import flatten_transforms
from datamodules.image_csv import ImageCSVDataModule

log = logging.getLogger(__name__)


def preprocessing(data: ImageCSVDataModule) -> dict[str, Any] | None:
    """The description of ``data``'s inputs; None before setup or where a sample fails."""
    # Not the training set: its random crops need not give the eval size.
    dataset = next((data.datasets[s] for s in ("val", "test", "predict")
                    if s in data.datasets and len(data.datasets[s])), None)
    if dataset is None:
        return None
    try:
        item = dataset[0]  # (image, target), or the image alone (predict, task none)
        batch = (item[0] if isinstance(item, tuple) else item).unsqueeze(0)
        if data.eval_batch_transforms is not None:
            batch = data.eval_batch_transforms(batch)
    except (RuntimeError, OSError) as error:  # never stop a checkpoint from being saved
        log.warning("input shape for export metadata unknown: %s", error)
        return None
    steps = [t for top in (data.eval_transforms, data.eval_batch_transforms)
             for t in flatten_transforms(top)]
    normalize = [t for t in steps if isinstance(t, v2.Normalize)]
    return {
        "read_mode": data.read_mode,
        "input_shape": list(batch.shape[1:]),
        "input_dtype": str(batch.dtype).removeprefix("torch."),
        "mean": [float(m) for m in normalize[-1].mean] if normalize else None,
        "std": [float(s) for s in normalize[-1].std] if normalize else None,
        "eval_transforms": [repr(t) for t in steps],
    }
