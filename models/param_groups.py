"""Parameter groups for weight decay, as timm's ``param_groups_weight_decay``: decaying biases and
normalisation parameters hurts accuracy and regularises nothing (they do not grow with the
data's scale)."""

from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.nn.parameter import is_lazy

from errors import DataError

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def param_groups_weight_decay(model: nn.Module, no_weight_decay: Iterable[str] = (),
                              exclude_bias_and_norm: bool = True) -> list[dict[str, Any]]:
    """``model``'s trainable parameters (frozen ones keep no optimizer state) in a group that
    gets the optimizer's own ``weight_decay`` and one with 0: every 1-D parameter, ``*.bias``,
    parameter of a normalisation layer (a LayerNorm's weight can be n-D) and name in
    ``no_weight_decay`` (exact, or a prefix ending in ``.``). ``exclude_bias_and_norm=False``
    decays biases and norms too, to reproduce papers. Empty groups, which some optimizers
    reject, are dropped."""
    skip = tuple(no_weight_decay)
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS)
                   for p in m.parameters()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if is_lazy(param):  # its ndim is not its layer's yet: the group would be a guess
            raise DataError(f"{type(model).__name__}.{name} has no shape yet when the optimizer "
                            "is built (a lazy layer that forward(inputs) does not call): give "
                            "that layer its input size")
        bias_or_norm = param.ndim <= 1 or name.endswith(".bias") or id(param) in norm_params
        listed = any(name == p or (p.endswith(".") and name.startswith(p)) for p in skip)
        (no_decay if (exclude_bias_and_norm and bias_or_norm) or listed else decay).append(param)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
