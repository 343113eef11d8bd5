"""Load pretrained weights from a local file into a network whose head (and maybe stem) differ.

Transfer learning here never downloads: the weights are a file on disk, either a plain
``state_dict`` (what ``torch.save(model.state_dict(), path)`` writes, e.g. torchvision's ImageNet
weights saved once on a machine with network access) or a Lightning checkpoint of this project,
whose ``state_dict`` holds the network under ``net.``. The file is read with
``weights_only=True``: tensors and plain types only, no code from the file is run.

What may differ between the file and the network, and what happens:

- the head (a different number of classes): left as initialised, one log line says so;
- the stem's input channels (RGB weights, grayscale data): adapted as timm's
  ``adapt_input_conv`` does, summing over the colour channels for one channel (a gray image then
  gets the response the RGB weights give to the same image in colour), repeating and rescaling
  for other counts;
- anything else (a missing, unexpected or differently shaped tensor): an error naming the file
  and the first keys, because training on half-loaded weights fails silently.
"""

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from errors import DataError

log = logging.getLogger(__name__)

# Where a network sits inside the files this project writes: ImageClassifier keeps it as `net`,
# TorchvisionBackbone keeps the torchvision model as `model`.
CHECKPOINT_PREFIXES = ("net.model.", "net.")


class WeightsFileError(DataError):
    """A weights file that cannot be read or does not fit the network; the message names it.
    A DataError, so train.py reports it as one line, like any other bad input file."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``state_dict`` file or of a Lightning checkpoint's network."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"weights file not found: {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean "not a weights file"
        raise WeightsFileError(f"{path}: not a readable state_dict file ({error})") from error
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = _network_of_checkpoint(content["state_dict"])
    if not isinstance(content, Mapping) or not all(
        isinstance(v, Tensor) for v in content.values()
    ):
        raise WeightsFileError(f"{path}: holds no state_dict (a mapping of names to tensors)")
    return dict(content)


def _network_of_checkpoint(state: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    for prefix in CHECKPOINT_PREFIXES:
        inner = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if inner:
            return inner
    return state


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    replaced: Iterable[str] = (),
    stem: str | None = None,
) -> None:
    """Copy the tensors of ``path`` into ``model``.

    Args:
        replaced: names of tensors of layers the network rebuilt on purpose (the head, sized
            for the classes; a small-input stem): loaded when their shape matches, otherwise
            left as initialised and logged.
        stem: name of the first convolution's weight; adapted if only its input channels
            differ.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    replaced = set(replaced)
    to_load: dict[str, Tensor] = {}
    skipped: list[str] = []
    unexpected: list[str] = []
    mismatched: list[str] = []
    for name, tensor in state.items():
        if name not in own:
            unexpected.append(name)
        elif tensor.shape == own[name].shape:
            to_load[name] = tensor
        elif name == stem and _same_but_input_channels(tensor, own[name]):
            to_load[name] = adapt_input_channels(tensor, own[name].shape[1])
            log.info("%s: %s adapted from %d to %d input channels", path, name,
                     tensor.shape[1], own[name].shape[1])
        elif name in replaced:
            skipped.append(name)
        else:
            mismatched.append(f"{name} {tuple(tensor.shape)} vs {tuple(own[name].shape)}")
    result = model.load_state_dict(to_load, strict=False)
    missing = [k for k in result.missing_keys if k not in replaced]
    problems = [f"{label}: {_first(keys)}" for label, keys in (
        ("missing", missing), ("unexpected", unexpected),
        ("shape differs (file vs model)", mismatched)) if keys]
    if problems:
        raise WeightsFileError(f"{path} does not fit {type(model).__name__}: "
                               + "; ".join(problems))
    if skipped:
        log.info("%s: %d tensors left as initialised (the network's own layers): %s",
                 path, len(skipped), _first(skipped))


def _same_but_input_channels(a: Tensor, b: Tensor) -> bool:
    return a.ndim == b.ndim == 4 and a.shape[0] == b.shape[0] and a.shape[2:] == b.shape[2:]


def adapt_input_channels(weight: Tensor, channels: int) -> Tensor:
    """A conv weight ``(out, c, k, k)`` for ``channels`` inputs (timm's ``adapt_input_conv``).

    One channel: the sum over the file's channels. Otherwise the file's channels are repeated
    to cover ``channels`` and scaled by ``c / channels``, keeping the activations' scale.
    """
    if channels == weight.shape[1]:
        return weight
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-channels // weight.shape[1])  # ceil
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (weight.shape[1] / channels)


def _first(keys: list[str], limit: int = 3) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
