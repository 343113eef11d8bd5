"""The task modules in process, on tiny synthetic data a user could check by hand: the regressor
answers in the targets' units, the multilabel classifier and the segmenter learn what is
learnable, every module reloads from its checkpoint alone, and ``models.optim`` serves a module
written by a user.

The template's modules are built through LightningCLI from config values, as train.py builds
them, so their checkpoints hold what a real run's hold."""

import functools
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from models.classifier import ImageClassifier
from models.mlp import MLP
from models.optim import check_resumed_schedule, optimizers_from_config
from models.regressor import Regressor
from models.segmenter import Segmenter
from models.small_cnn import SmallCNN
from models.unet import UNet

QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
         "enable_model_summary": False, "num_sanity_val_steps": 0, "accelerator": "cpu",
         "devices": 1}
ADAMW = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}}
ONE_CYCLE = {"class_path": "torch.optim.lr_scheduler.OneCycleLR", "init_args": {"max_lr": 0.05}}


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """One intra-op thread: these tensors are tiny, and on a shared 2-core machine handing
    each op to a second thread made the fits 10x slower (18 s instead of 1.4 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def from_config(model_class: type[LightningModule], steps: int,
                **init_args: Any) -> tuple[Any, Trainer]:
    """The module and a trainer as LightningCLI (train.py) builds them from YAML values."""
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # pytest's are not for the CLI
        cli = LightningCLI(model_class, run=False, save_config_callback=None,
                           auto_configure_optimizers=False, seed_everything_default=0,
                           args={"model": init_args, "trainer": {**QUIET, "max_steps": steps}})
    return cli.model, cli.trainer


def loader(*tensors: Tensor, shuffle: bool = False, batch_size: int = 32) -> DataLoader:
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle)


class KeepValidationOutputs(Callback):
    def __init__(self) -> None:
        self.outputs: list[Tensor] = []

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule,
                                outputs: Any, *args: Any) -> None:
        self.outputs.append(outputs)


def validate(model: LightningModule, data: DataLoader) -> tuple[dict[str, float], Tensor]:
    """The logged validation metrics, and what ``validation_step`` returned, concatenated."""
    keep = KeepValidationOutputs()
    trainer = Trainer(**QUIET, callbacks=[keep])
    trainer.validate(model, data, verbose=False)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    return metrics, torch.cat(keep.outputs)


def assert_reloads_identically(model: LightningModule, trainer: Trainer, path: Path,
                               inputs: Tensor) -> LightningModule:
    """``load_from_checkpoint(path)``, with no arguments, gives the same outputs."""
    trainer.save_checkpoint(path)
    reloaded = type(model).load_from_checkpoint(path, map_location="cpu").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(inputs), model.eval()(inputs))
    return reloaded


# -- regression -------------------------------------------------------------------------------
def linear_targets(x: Tensor, outputs: int) -> Tensor:
    """y = 3x + 100 (and -50x + 5 as a second column): far from zero mean and unit scale."""
    y = torch.stack([3 * x[:, 0] + 100, -50 * x[:, 0] + 5], dim=1)[:, :outputs]
    return y[:, 0] if outputs == 1 else y


# Two targets is the same path with a wider head: slow, one target keeps the quick contract.
@pytest.mark.parametrize("outputs", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_regressor_learns_a_line_and_answers_in_the_targets_units_and_shape(
    tmp_path: Path, outputs: int
) -> None:
    torch.manual_seed(0)
    x = torch.rand(512, 1) * 4 - 2
    y = linear_targets(x, outputs)
    stats = y.view(len(y), -1)  # what the datamodule links, from the training split
    model, trainer = from_config(
        Regressor, steps=200, optimizer=ADAMW, scheduler=ONE_CYCLE, in_features=1,
        num_outputs=outputs, target_mean=stats.mean(0).tolist(),
        target_std=stats.std(0).tolist(), target_names=["y", "z"][:outputs])
    trainer.fit(model, loader(x, y, shuffle=True))

    x_val = torch.linspace(-1.9, 1.9, 64).unsqueeze(1)
    y_val = linear_targets(x_val, outputs)
    metrics, outputs_seen = validate(model, loader(x_val, y_val))
    with torch.no_grad():
        predicted = model.eval()(x_val)
    assert predicted.shape == y_val.shape  # (N,) for one target, (N, K) for several
    torch.testing.assert_close(outputs_seen, predicted)  # validation_step: the predictions
    # In the targets' units: within a fraction of a standard deviation of 3x + 100, nowhere
    # near its standardised value (about x / 1.15).
    scale = stats.std(0)
    assert ((predicted - y_val).abs().view(64, -1) < 0.25 * scale).all()
    assert metrics["val/mae"] < 0.1 * scale.max()
    assert metrics["val/r2"] > 0.99
    assert metrics["val/rmse"] >= metrics["val/mae"] and "val/loss" in metrics
    predictions = Trainer(**QUIET).predict(model, loader(x_val))
    torch.testing.assert_close(torch.cat(predictions), predicted)  # predict_step: forward
    assert_reloads_identically(model, trainer, tmp_path / "r.ckpt", x_val)


# -- multilabel -------------------------------------------------------------------------------
def tags(x: Tensor) -> Tensor:
    """Three labels per row, any number of them on: a learnable multi-hot target."""
    return (x[:, :3] + x[:, 3:6] > 0).float()


def test_multilabel_classifier_reaches_a_high_map_and_predicts_a_probability_per_label(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    model, trainer = from_config(
        ImageClassifier, steps=160, optimizer=ADAMW, task="multilabel", num_classes=3,
        class_names=["a", "b", "c"], in_features=8)
    assert isinstance(model.net, MLP)  # the default backbone for a table
    trainer.fit(model, loader(x, tags(x), shuffle=True))

    x_val = torch.randn(256, 8)
    metrics, logits = validate(model, loader(x_val, tags(x_val)))
    assert metrics["val/map"] > 0.9
    assert metrics["val/f1"] > 0.8
    assert logits.shape == (256, 3)
    (probs,) = Trainer(**QUIET).predict(model, loader(x_val, batch_size=256))
    assert probs.shape == (256, 3) and ((probs >= 0) & (probs <= 1)).all()
    assert not torch.allclose(probs.sum(1), torch.ones(256))  # independent, not a softmax
    # Several labels on at once are predicted as such.
    assert ((probs > 0.5).sum(1) >= 2).any()
    assert_reloads_identically(model, trainer, tmp_path / "c.ckpt", x_val)


# -- segmentation -----------------------------------------------------------------------------
def squares(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """16x16 noise with one bright square of side 4 to 7 per image; its pixels are class 1."""
    images = torch.randn(n, 1, 16, 16, generator=generator) * 0.3
    masks = torch.zeros(n, 16, 16, dtype=torch.long)
    for i in range(n):
        side = int(torch.randint(4, 8, (), generator=generator))
        top, left = (int(v) for v in torch.randint(0, 17 - side, (2,), generator=generator))
        masks[i, top:top + side, left:left + side] = 1
    return images + masks.unsqueeze(1), masks


def test_segmenter_finds_the_bright_squares_and_ignores_the_ignore_index(
    tmp_path: Path,
) -> None:
    generator = torch.Generator().manual_seed(0)
    images, masks = squares(256, generator)
    model, trainer = from_config(Segmenter, steps=60, optimizer=ADAMW, num_classes=2,
                                 class_names=["background", "square"], in_channels=1,
                                 backbone={"class_path": "models.unet.UNet",
                                           "init_args": {"widths": [8, 16]}})
    assert model.net.down[0][0][0].in_channels == 1  # the linked value, UNet's unset
    trainer.fit(model, loader(images, masks, shuffle=True, batch_size=16))

    val_images, val_masks = squares(64, generator)
    metrics, predicted = validate(model, loader(val_images, val_masks))
    assert metrics["val/miou"] > 0.8
    assert metrics["val/dice"] > 0.8 and metrics["val/acc"] > 0.9
    assert predicted.shape == val_masks.shape and predicted.dtype == torch.int64
    (mask,) = Trainer(**QUIET).predict(model, loader(val_images, batch_size=64))
    assert torch.equal(mask, predicted)  # predict_step: the argmax mask, (N, H, W)
    reloaded = assert_reloads_identically(model, trainer, tmp_path / "s.ckpt", val_images)

    # The pixels it gets wrong marked unlabelled: nothing left to fault, in any metric.
    ignoring = Segmenter(num_classes=2, ignore_index=255, in_channels=1,
                         backbone=functools.partial(UNet, widths=(8, 16)))
    ignoring.load_state_dict(reloaded.state_dict())
    unlabelled = val_masks.where(predicted == val_masks, 255)
    assert (unlabelled == 255).any()
    metrics, _ = validate(ignoring, loader(val_images, unlabelled))
    assert metrics["val/miou"] == metrics["val/dice"] == metrics["val/acc"] == 1.0


def test_unet_keeps_any_input_size() -> None:
    net = UNet(3, in_channels=2).eval()
    for size in ((16, 16), (13, 7), (1, 1)):
        assert net(torch.randn(2, 2, *size)).shape == (2, 3, *size)


# -- the classifier's task and default backbone ------------------------------------------------
@pytest.mark.parametrize(
    ("module", "task", "names"),
    [(ImageClassifier, "regression", "models.regressor.Regressor"),
     (ImageClassifier, "segmentation", "models.segmenter.Segmenter"),
     (ImageClassifier, "none", "your own"),
     (Regressor, "multiclass", "models.classifier.ImageClassifier"),
     (Segmenter, "multilabel", "task: multilabel")],
)
def test_a_module_given_another_tasks_data_names_the_module_to_use_in_one_line(
    module: type[LightningModule], task: str, names: str
) -> None:
    with pytest.raises(ValueError) as error:
        module(task=task)
    message = str(error.value)
    assert names in message and repr(task) in message and "\n" not in message


def test_classifier_default_backbone_follows_the_data_and_a_configured_size_wins() -> None:
    assert isinstance(ImageClassifier(num_classes=3, in_features=5).net, MLP)
    rgb = ImageClassifier(num_classes=3, in_channels=3).net
    assert isinstance(rgb, SmallCNN) and rgb.features[0][0].in_channels == 3
    assert ImageClassifier(num_classes=3).net.features[0][0].in_channels == 1
    # As jsonargparse hands it over: every init argument, unset ones None.
    configured = functools.partial(SmallCNN, in_channels=1, widths=(8,), pool_after=None,
                                   dropout=0.1)
    net = ImageClassifier(configured, num_classes=3, in_channels=3).net
    assert net.features[0][0].in_channels == 1
    unset = functools.partial(SmallCNN, in_channels=None, widths=(8,), pool_after=None,
                              dropout=0.1)
    assert ImageClassifier(unset, num_classes=3, in_channels=3).net.features[0][0].in_channels == 3


def test_multiclass_predictions_stay_softmax_probabilities() -> None:
    model = ImageClassifier(num_classes=4).eval()
    with torch.no_grad():
        probs = model.predict_step(torch.randn(5, 1, 12, 12), 0)
    torch.testing.assert_close(probs.sum(1), torch.ones(5))


# -- models.optim in a module of the user's own ------------------------------------------------
class Scaled(nn.Module):
    """A 2-D parameter that its module lists as not to be decayed, timm style."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, 8))

    def no_weight_decay(self) -> list[str]:
        return ["scale"]

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class UserModule(LightningModule):
    """What a user writes: the config's callables in, ``optimizers_from_config`` out."""

    def __init__(self, optimizer: Any, scheduler: Any = None) -> None:
        super().__init__()
        self.optimizer, self.scheduler = optimizer, scheduler
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), Scaled())
        self.head = nn.Linear(8, 1)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.head(self.body(x)).squeeze(-1), y)

    def configure_optimizers(self) -> Any:
        return optimizers_from_config(self, self.optimizer, self.scheduler)

    def on_train_start(self) -> None:
        check_resumed_schedule(self)


def test_optimizers_from_config_gives_a_users_module_decay_groups_and_a_sized_one_cycle(
    tmp_path: Path,
) -> None:
    model = UserModule(functools.partial(torch.optim.AdamW, lr=0.01, weight_decay=0.1),
                       functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01))
    data = loader(torch.randn(48, 4), torch.randn(48), batch_size=8)  # 6 batches
    trainer = Trainer(**QUIET, max_epochs=2, limit_train_batches=4, accumulate_grad_batches=2)
    trainer.fit(model, data)

    (schedule,) = [c.scheduler for c in trainer.lr_scheduler_configs]
    assert isinstance(schedule, torch.optim.lr_scheduler.OneCycleLR)
    assert schedule.total_steps == trainer.estimated_stepping_batches == 4
    assert trainer.global_step == 4
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["weight_decay"]: {names[id(p)] for p in g["params"]}
              for g in trainer.optimizers[0].param_groups}
    assert groups == {0.1: {"body.0.weight", "head.weight"},
                      0.0: {"body.0.bias", "body.1.weight", "body.1.bias", "body.3.scale",
                            "head.bias"}}

    # Resumed with a longer run: refused before the first step, with advice.
    trainer.save_checkpoint(tmp_path / "u.ckpt")
    longer = Trainer(**QUIET, max_epochs=3, limit_train_batches=4, accumulate_grad_batches=2)
    with pytest.raises(ValueError, match="spans 4 steps but this run has 6"):
        longer.fit(model, data, ckpt_path=tmp_path / "u.ckpt")

    # ReduceLROnPlateau watches the metric it is told to; no trainer needed to size it.
    plateau = optimizers_from_config(
        UserModule(None), functools.partial(torch.optim.SGD, lr=0.1),
        torch.optim.lr_scheduler.ReduceLROnPlateau, interval="epoch", monitor="val/mae")
    assert plateau["lr_scheduler"]["monitor"] == "val/mae"
    assert plateau["lr_scheduler"]["interval"] == "epoch"
