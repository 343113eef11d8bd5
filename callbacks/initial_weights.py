"""Start a new run from another run's weights: the checkpoint's ``state_dict`` only, loaded into
the model the config builds. A run resumed with ``--ckpt_path`` (the same command after a
crash) keeps its own weights: the file is not loaded again.

``--ckpt_path`` resumes a run (same model, data and task; optimizer, schedule, epoch and data
position come back with the weights). This is the other thing people mean by "train from that
checkpoint": fine-tuning on new data, a new head, a new schedule, epoch 0. Lightning has no
callback for it; ``LightningModule.load_from_checkpoint`` would rebuild the *checkpoint's*
model instead of the configured one.

    python train.py --config my_data.yaml \\
        --trainer.callbacks+=callbacks.initial_weights.InitialWeights \\
        --trainer.callbacks.init_args.path=logs/digits/version_0/checkpoints/last.ckpt
"""

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from errors import DataError
from models.checkpoints import read_checkpoint


class InitialWeights(Callback):
    """Copy the tensors of ``path`` whose name and shape match into the model when fit starts,
    and say in one line what matched and what was left as initialised.

    Args:
        path: a Lightning checkpoint (its ``state_dict``) or a file holding a plain state dict
            (what ``torch.save(model.state_dict(), path)`` writes), read with
            ``weights_only=True``.
        strict: refuse, instead of leaving as initialised, model tensors the file does not
            have (or has with another shape).
    """

    def __init__(self, path: str | Path, strict: bool = False) -> None:
        self.path = Path(path)
        self.strict = strict

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Before the run folder gets its config.yaml: a refused run leaves nothing behind.
        if stage == "fit" and not self.path.is_file():
            raise DataError(f"InitialWeights: weights file not found: {self.path}")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After setup: lazy layers have their shapes (CheckModelTakesData ran a sample).
        if trainer.ckpt_path:  # the same command resumed: the run's own weights continue
            rank_zero_info(f"InitialWeights: resuming from {trainer.ckpt_path}, so {self.path} "
                           "is not loaded")
            return
        checkpoint = read_checkpoint(self.path) if self.path.suffix == ".ckpt" else None
        state = checkpoint["state_dict"] if checkpoint else plain_state_dict(self.path)
        own = pl_module.state_dict()
        matched = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
        left = [k for k in own if k not in matched]
        unused = [k for k in state if k not in matched]
        name = type(pl_module).__name__
        if not matched:
            raise DataError(f"InitialWeights: no tensor of {self.path} fits {name} (first of "
                            f"the file: {_first(list(state))}; of the model: {_first(list(own))})")
        if self.strict and left:
            raise DataError(f"InitialWeights: {self.path} does not have {len(left)} of {name}'s "
                            f"tensors with their shape ({_first(left)}); strict: false keeps them "
                            "as initialised")
        pl_module.load_state_dict(matched, strict=False)
        rank_zero_info(f"InitialWeights: {len(matched)} of {name}'s {len(own)} tensors from "
                       f"{self.path}; left as initialised: {_first(left) or 'none'}; not used "
                       f"from the file: {_first(unused) or 'none'}")


def plain_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DataError(f"InitialWeights: {path} is not a readable weights file "
                        f"({type(error).__name__})") from None
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise DataError(f"InitialWeights: {path} is not a state dict (name -> tensor)")
    return state


def _first(keys: list[str], limit: int = 3) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
