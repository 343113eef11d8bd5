"""Parameter groups for weight decay.

Decaying biases and normalisation scales/shifts hurts accuracy and buys no regularisation (they
do not grow with the data's scale), so — as in timm's ``param_groups_weight_decay`` — every
parameter with ``ndim <= 1``, every ``*.bias``, every parameter of a normalisation layer (a
``LayerNorm`` over several dims has an n-D weight) and every name the model lists goes into a
group with ``weight_decay=0``. Frozen parameters are left out so optimizers do not keep state
for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
)


def param_groups_weight_decay(
    model: nn.Module,
    no_weight_decay: Iterable[str] = (),
    exclude_bias_and_norm: bool = True,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a decayed and a non-decayed group.

    The decayed group carries no ``weight_decay`` key, so it gets the optimizer's own setting
    (the one in the config); only the other group overrides it with 0.

    ``no_weight_decay`` holds extra parameter names (exact, or a prefix ending in ``.``) that
    must not be decayed, e.g. positional embeddings. ``exclude_bias_and_norm=False`` decays
    biases and normalisation parameters too (the classic ``optimizer(model.parameters())``),
    for reproducing papers that did. Empty groups are dropped because some optimizers reject
    them.
    """
    skip = tuple(no_weight_decay)
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()
    }
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        bias_or_norm = param.ndim <= 1 or name.endswith(".bias") or id(param) in norm_params
        if (exclude_bias_and_norm and bias_or_norm) or _matches(name, skip):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or (p.endswith(".") and name.startswith(p)) for p in patterns)
