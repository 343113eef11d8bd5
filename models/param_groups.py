"""Parameter groups for weight decay.

Decaying biases and normalisation scales/shifts hurts accuracy and buys no regularisation (they
do not grow with the data's scale), so — as in timm's ``param_groups_weight_decay`` — every
parameter with ``ndim <= 1``, every ``*.bias`` and every name the model lists goes into a group
with ``weight_decay=0``. Frozen parameters are left out so optimizers do not keep state for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn


def param_groups_weight_decay(
    model: nn.Module,
    no_weight_decay: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a decayed and a non-decayed group.

    The decayed group carries no ``weight_decay`` key, so it gets the optimizer's own setting
    (the one in the config); only the other group overrides it with 0.

    ``no_weight_decay`` holds extra parameter names (exact, or a prefix ending in ``.``) that
    must not be decayed, e.g. positional embeddings. Empty groups are dropped because some
    optimizers reject them.
    """
    skip = tuple(no_weight_decay)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or _matches(name, skip):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or (p.endswith(".") and name.startswith(p)) for p in patterns)
