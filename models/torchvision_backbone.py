"""Any torchvision classification model, by name, as a backbone for ``ImageClassifier``.

    backbone:
      class_path: models.torchvision_backbone.TorchvisionBackbone
      init_args: {name: resnet18, in_channels: 1, small_input: true}

Built with ``torchvision.models.get_model(name, weights=None, num_classes=...)``: nothing is
downloaded. Pretrained weights come from a local file (``weights_path``), see
``models.pretrained``.
"""

import difflib
import logging
from pathlib import Path
from typing import Any

import torchvision
from torch import Tensor, nn

from models.pretrained import load_pretrained

log = logging.getLogger(__name__)


def classification_models() -> list[str]:
    """Names ``get_model`` accepts for image classification (no detection/segmentation/video,
    whose outputs are not logits)."""
    return torchvision.models.list_models(module=torchvision.models)


class TorchvisionBackbone(nn.Module):
    """A torchvision classification model with its stem and head fitted to the data.

    Args:
        num_classes: given by ``ImageClassifier``; the model's own head is built for it.
        name: any name from ``torchvision.models.list_models(module=torchvision.models)``,
            e.g. ``resnet18``, ``efficientnet_b0``, ``convnext_tiny``, ``vit_b_16``.
        in_channels: input channels; the first convolution is rebuilt for them when not 3
            (1 for grayscale). None (unset): the data's, which the module passes, else the
            model's own (3). Set 3 where the transforms make gray images RGB.
        weights_path: a local file with pretrained weights: a ``state_dict`` of the torchvision
            model (``torch.save(resnet18(weights="DEFAULT").state_dict(), path)``), or a
            checkpoint of this project with this backbone. Head tensors of another number of
            classes are skipped; anything else that does not fit is an error naming the file.
        small_input: for images of ~32 px or less, ResNet-style models (``conv1`` +
            ``maxpool``) get a 3x3 stride-1 first convolution and no max-pool, as for CIFAR:
            the ImageNet stem divides the input by 4 before the first block, leaving a 12x12
            digit 3x3 pixels. An ImageNet stem's weights then do not fit (7x7 vs 3x3) and are
            not loaded; those of a small-input checkpoint are.
        model_kwargs: more keyword arguments for the torchvision constructor, e.g.
            ``{dropout: 0.3}`` for EfficientNet.
    """

    def __init__(
        self,
        num_classes: int,
        name: str = "resnet18",
        in_channels: int | None = None,
        weights_path: str | None = None,
        small_input: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        known = classification_models()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"TorchvisionBackbone: {name!r} is not a torchvision "
                             f"classification model.{hint}")
        self.model = torchvision.models.get_model(
            name, weights=None, num_classes=num_classes, **(model_kwargs or {}))
        stem_name, stem = _first_conv(self.model)
        channels = stem.in_channels if in_channels is None else in_channels
        replaced = []
        if small_input:
            self._use_small_input_stem(name, channels)
            replaced = [f"{stem_name}.weight", f"{stem_name}.bias"]
        elif channels != stem.in_channels:
            self.model.set_submodule(stem_name, _conv_like(stem, channels))
        self.head_name = _head_name(self.model, num_classes)
        if weights_path is not None:
            load_pretrained(
                self.model, Path(weights_path), stem=f"{stem_name}.weight",
                replaced=[f"{self.head_name}.weight", f"{self.head_name}.bias", *replaced],
            )
            log.info("TorchvisionBackbone: %s weights loaded from %s", name, weights_path)

    @property
    def head(self) -> nn.Module:
        """The classification layer: what ``callbacks.finetuning.FreezeBackbone`` keeps
        trainable while it freezes the rest."""
        return self.model.get_submodule(self.head_name)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _use_small_input_stem(self, name: str, in_channels: int) -> None:
        if not (isinstance(getattr(self.model, "conv1", None), nn.Conv2d)
                and isinstance(getattr(self.model, "maxpool", None), nn.MaxPool2d)):
            raise ValueError(f"TorchvisionBackbone: small_input needs a ResNet-style model "
                             f"(conv1 + maxpool); {name} has none")
        self.model.conv1 = nn.Conv2d(in_channels, self.model.conv1.out_channels, kernel_size=3,
                                     stride=1, padding=1, bias=False)
        self.model.maxpool = nn.Identity()


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The stem: the first ``Conv2d`` in definition order, which is the first applied in
    every torchvision classification model."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__} has no Conv2d to take the input channels")


def _head_name(model: nn.Module, num_classes: int) -> str:
    """The last layer producing ``num_classes`` outputs (``fc``, ``classifier.1``,
    ``heads.head``; a 1x1 convolution in SqueezeNet)."""
    heads = [name for name, m in model.named_modules()
             if (isinstance(m, nn.Linear) and m.out_features == num_classes)
             or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)]
    if not heads:
        raise ValueError(f"{type(model).__name__}: no layer with {num_classes} outputs found")
    return heads[-1]


def _conv_like(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                     conv.padding_mode)

