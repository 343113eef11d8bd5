"""Models: torchvision backbones by name, plug-in backbones and modules, transfer learning from
a local weights file with a freeze/unfreeze schedule, and the speed switches."""

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

import train
from callbacks.finetuning import FreezeBackbone, extend_scheduler
from models.classifier import ImageClassifier
from models.pretrained import WeightsFileError
from models.schedulers import WarmupCosineLR
from models.small_cnn import SmallCNN
from models.torchvision_backbone import TorchvisionBackbone
from tests.conftest import REPO, base_args

TINY = [
    "--max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
]


def save_torchvision_weights(path: Path, name: str = "resnet18") -> dict[str, torch.Tensor]:
    """What a user saves once from torchvision (3 input channels, 1000 ImageNet classes)."""
    torch.manual_seed(1)
    state = torchvision.models.get_model(name).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


# -- torchvision by name ---------------------------------------------------------------------
@pytest.mark.slow
def test_resnet18_by_name_trains_through_train_py_and_reloads_without_arguments(
    run_dir: Path, digits_root: Path
) -> None:
    cli = train.main(["--config", str(REPO / "configs" / "resnet18.yaml"),
                      *base_args(digits_root, run_dir / "logs"), *TINY])

    net = cli.model.net
    assert isinstance(net, TorchvisionBackbone)
    assert net.model.conv1.in_channels == 1 and net.model.fc.out_features == 10
    assert cli.trainer.global_step == 3
    assert "test/acc" in cli.trainer.callback_metrics
    last = run_dir / "logs" / "resnet18" / "version_0" / "checkpoints" / "last.ckpt"
    reloaded = ImageClassifier.load_from_checkpoint(last, map_location="cpu").eval()
    batch = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(reloaded(batch), cli.model.cpu().eval()(batch))
    # The same checkpoint serves as a weights file for a new backbone (all tensors fit).
    again = TorchvisionBackbone(10, "resnet18", in_channels=1, small_input=True,
                                weights_path=str(last))
    for key, tensor in net.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], tensor.cpu()), key


def test_a_torchvision_backbone_without_in_channels_gets_the_datas() -> None:
    from collections.abc import Callable

    from jsonargparse import ArgumentParser
    from torch import nn

    # The README's backbone config, as LightningCLI hands it to ImageClassifier: a partial
    # holding every init argument; GRAY data links in_channels 1.
    parser = ArgumentParser()
    parser.add_argument("--backbone", type=Callable[[int], nn.Module])
    config = parser.parse_args(["--backbone=models.torchvision_backbone.TorchvisionBackbone",
                                "--backbone.small_input=true"])
    backbone = parser.instantiate_classes(config).backbone
    assert ImageClassifier(backbone, num_classes=10, in_channels=1).net.model.conv1.in_channels == 1
    assert TorchvisionBackbone(10, "resnet18").model.conv1.in_channels == 3  # built alone


def test_unknown_torchvision_name_is_refused_with_suggestions() -> None:
    with pytest.raises(ValueError, match=r"'resnet19' is not .* Did you mean resnet18"):
        TorchvisionBackbone(10, "resnet19")


# -- plug-ins: a backbone with one YAML change, Lightning's BoringModel ---------------------
@pytest.mark.slow
def test_backbone_from_outside_the_repo_trains_with_one_yaml_change(
    run_dir: Path, digits_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's "Your own model" (a), word for word.
    plugin = run_dir / "plugin"
    plugin.mkdir()
    (plugin / "my_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        class TinyNet(nn.Module):
            def __init__(self, num_classes: int, in_channels: int = 1, width: int = 8):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
                self.head = nn.Linear(width, num_classes)

            def forward(self, x):
                return self.head(self.body(x))
    """))
    (plugin / "my_model.yaml").write_text(textwrap.dedent("""
        model:
          init_args:
            backbone:
              class_path: my_nets.TinyNet
              init_args: {width: 12}
    """))
    monkeypatch.syspath_prepend(str(plugin))

    cli = train.main(["--config", str(plugin / "my_model.yaml"),
                      *base_args(digits_root, run_dir / "logs"), *TINY])

    assert type(cli.model.net).__name__ == "TinyNet"
    assert cli.model.net.head.in_features == 12
    assert cli.trainer.global_step == 3
    assert "test/acc" in cli.trainer.callback_metrics


def test_lightnings_boring_model_trains_and_tests_through_train_py(run_dir: Path) -> None:
    logs = run_dir / "logs"
    cli = train.main([
        "--model=lightning.pytorch.demos.boring_classes.BoringModel",
        "--data=null",               # it brings its own dataloaders
        "--checkpoint.monitor=null",  # it logs no val/loss: keep the last epoch's weights
        "--max_steps=3", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
        f"--trainer.logger.init_args.save_dir={logs}", f"--trainer.default_root_dir={logs}",
        "--trainer.enable_progress_bar=false",
    ])

    assert type(cli.model) is BoringModel
    assert cli.trainer.global_step == 3
    assert cli.trainer.state.fn == "test"  # fit, then test of the kept checkpoint
    assert Path(cli.trainer.checkpoint_callback.best_model_path).is_file()


# -- transfer learning ------------------------------------------------------------------------
@pytest.mark.slow
def test_weights_file_loads_into_a_grayscale_backbone_with_a_new_head(tmp_path: Path) -> None:
    state = save_torchvision_weights(tmp_path / "r18.pth")

    net = TorchvisionBackbone(10, "resnet18", in_channels=1, weights_path=str(tmp_path / "r18.pth"))

    own = net.model.state_dict()
    for key in ("layer1.0.conv1.weight", "layer4.1.bn2.running_var", "bn1.bias"):
        assert torch.equal(own[key], state[key]), key
    # RGB stem summed over colours: a gray image gets the RGB response to the same image.
    assert torch.allclose(own["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert own["fc.weight"].shape == (10, 512)  # 1000-class head skipped, not loaded
    # A small-input stem (3x3) cannot take the 7x7 ImageNet stem; the rest still loads.
    small = TorchvisionBackbone(10, "resnet18", in_channels=1, small_input=True,
                                weights_path=str(tmp_path / "r18.pth"))
    assert small.model.conv1.weight.shape == (64, 1, 3, 3)
    assert torch.equal(small.model.state_dict()["layer1.0.conv1.weight"],
                       state["layer1.0.conv1.weight"])


def test_weights_file_of_another_architecture_is_one_error_naming_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r34.pth"
    save_torchvision_weights(path, "resnet34")
    with pytest.raises(WeightsFileError) as error:
        TorchvisionBackbone(10, "resnet18", weights_path=str(path))
    message = str(error.value)
    assert str(path) in message and "unexpected: layer1.2." in message
    assert "\n" not in message
    with pytest.raises(WeightsFileError, match=r"weights file not found: .*nope\.pth"):
        TorchvisionBackbone(10, "resnet18", weights_path=str(tmp_path / "nope.pth"))


@pytest.mark.slow
def test_a_weights_file_that_does_not_fit_stops_train_py_before_any_run_folder(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run_dir / "r34.pth"
    save_torchvision_weights(path, "resnet34")
    with pytest.raises(SystemExit) as stop:
        train.main(["--config", str(REPO / "configs" / "resnet18.yaml"),
                    *base_args(digits_root, run_dir / "logs"), *TINY,
                    f"--model.init_args.backbone.init_args.weights_path={path}"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("train.py: error:") and str(path) in error and "\n" not in error
    assert not (run_dir / "logs").exists()


class RecordFreezing(Callback):
    """Per training batch: whether a backbone and a head weight train, the optimizer groups'
    LRs and weight decays; per epoch end, a copy of the backbone weight."""

    backbone = "net.model.layer1.0.conv1.weight"
    head = "net.model.fc.weight"

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.backbone_after_epoch: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule,
                             batch: Any, batch_idx: int) -> None:
        params = dict(pl_module.named_parameters())
        groups = trainer.optimizers[0].param_groups
        self.batches.append({
            "epoch": trainer.current_epoch,
            "backbone_trains": params[self.backbone].requires_grad,
            "head_trains": params[self.head].requires_grad,
            "lrs": [g["lr"] for g in groups],
            "groups": [(g["weight_decay"], {p.ndim for p in g["params"]}) for g in groups],
        })

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        weight = dict(pl_module.named_parameters())[self.backbone]
        self.backbone_after_epoch.append(weight.detach().clone())


def transfer_args(run_dir: Path, digits_root: Path, epochs: int) -> list[str]:
    save_torchvision_weights(run_dir / "weights" / "resnet18.pth")  # the config's path
    return ["--config", str(REPO / "configs" / "transfer.yaml"),
            *base_args(digits_root, run_dir / "logs"), f"--max_epochs={epochs}",
            "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1", "--trainer.num_sanity_val_steps=0",
            "--trainer.callbacks+=tests.test_models.RecordFreezing"]


def recorder(cli: Any) -> RecordFreezing:
    return next(c for c in cli.trainer.callbacks if isinstance(c, RecordFreezing))


@pytest.mark.slow
def test_transfer_config_trains_the_head_then_unfreezes_the_backbone_at_its_epoch(
    run_dir: Path, digits_root: Path
) -> None:
    cli = train.main(transfer_args(run_dir, digits_root, epochs=3))  # unfreezes at epoch 2

    record = recorder(cli)
    by_epoch = {e: [b for b in record.batches if b["epoch"] == e] for e in range(3)}
    assert all(b["head_trains"] and not b["backbone_trains"] for b in by_epoch[0] + by_epoch[1])
    assert all(b["head_trains"] and b["backbone_trains"] for b in by_epoch[2])
    # Frozen: still the file's weights after two epochs; unfrozen: trained.
    loaded = torch.load(run_dir / "weights" / "resnet18.pth", weights_only=True)
    assert torch.equal(record.backbone_after_epoch[1], loaded["layer1.0.conv1.weight"])
    assert not torch.equal(record.backbone_after_epoch[2], record.backbone_after_epoch[1])
    # While frozen: the head's weights (decayed) and the 1-D head bias and BatchNorm
    # parameters (train_bn keeps them trainable; no decay). Then the backbone's conv weights
    # (ResNet convs have no bias) in their own decayed group, at 0.1 x the head's LR.
    for batch in by_epoch[0] + by_epoch[1]:
        assert batch["groups"] == [(0.05, {2}), (0.0, {1})]
    for batch in by_epoch[2]:
        assert batch["groups"] == [(0.05, {2}), (0.0, {1}), (0.05, {4})]
        assert batch["lrs"][2] == pytest.approx(0.1 * batch["lrs"][0])
    lrs = [b["lrs"][2] for b in by_epoch[2]]
    assert len(set(lrs)) == len(lrs)  # OneCycle moves the new groups every step
    # The checkpoint reloads without the pretrained file it started from.
    (run_dir / "weights" / "resnet18.pth").unlink()
    # The best one: train.py's final test loaded its weights into cli.model.
    best = cli.trainer.checkpoint_callback.best_model_path
    reloaded = ImageClassifier.load_from_checkpoint(best, map_location="cpu")
    for key, tensor in cli.model.net.state_dict().items():
        assert torch.equal(reloaded.net.state_dict()[key], tensor.cpu()), key
    assert cli.model.hparams["backbone"]["init_args"]["weights_path"] == "weights/resnet18.pth"


class RecordSmallCNN(Callback):
    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        conv, norm, _ = pl_module.net.features[0]  # type: ignore[index]
        self.epochs.append({
            "conv_trains": conv.weight.requires_grad,
            "norm_mean": norm.running_mean.clone(),
            "groups": [(g["weight_decay"], {p.ndim for p in g["params"]})
                       for g in trainer.optimizers[0].param_groups],
        })


@pytest.mark.slow
def test_frozen_batchnorm_joins_at_the_unfreeze_in_a_group_without_weight_decay(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 1, 12, 12), torch.arange(32) % 3)
    model = ImageClassifier(SmallCNN, num_classes=3, optimizer=lambda params: torch.optim.AdamW(
        params, lr=0.01, weight_decay=0.05))
    start = model.net.features[0][1].running_mean.clone()
    record = RecordSmallCNN()
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=2, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[
                          FreezeBackbone(unfreeze_at_epoch=1, train_bn=False), record])
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))

    frozen, unfrozen = record.epochs
    assert not frozen["conv_trains"] and unfrozen["conv_trains"]
    assert torch.equal(frozen["norm_mean"], start)  # frozen BatchNorm kept its statistics
    assert not torch.equal(unfrozen["norm_mean"], start)
    assert frozen["groups"] == [(0.05, {2}), (0.0, {1})]  # the head: weight, bias
    assert unfrozen["groups"] == [(0.05, {2}), (0.0, {1}), (0.05, {4}), (0.0, {1})]


class CrashInFourthEpoch(Callback):
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == 3:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
def test_resume_after_the_unfreeze_keeps_the_backbone_training_at_its_ratio(
    run_dir: Path, digits_root: Path
) -> None:
    args = transfer_args(run_dir, digits_root, epochs=4)  # unfreezes at epoch 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main([*args, "--trainer.callbacks+=tests.test_models.CrashInFourthEpoch"])

    cli = train.main([*args, "--ckpt_path=last"])

    fourth = recorder(cli).batches
    assert cli.trainer.global_step == 8
    assert [b["epoch"] for b in fourth] == [3, 3]  # only the epoch that was left
    for batch in fourth:
        assert batch["backbone_trains"]
        assert batch["groups"] == [(0.05, {2}), (0.0, {1}), (0.05, {4})]
        assert batch["lrs"][2] == pytest.approx(0.1 * batch["lrs"][0])
    assert len({b["lrs"][2] for b in fourth}) == 2  # still scheduled after the resume


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20),
        lambda opt: WarmupCosineLR(opt, warmup=3, total_steps=20),
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step)),
    ],
    ids=["OneCycleLR", "WarmupCosineLR", "StepLR", "LambdaLR"],
)
def test_groups_added_mid_run_follow_the_schedule_at_their_ratio(make_scheduler: Any) -> None:
    head, body = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.1)
    scheduler = make_scheduler(optimizer)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    optimizer.add_param_group({"params": list(body.parameters()),
                               "lr": 0.25 * optimizer.param_groups[0]["lr"], "lr_ratio": 0.25})
    extend_scheduler(scheduler)
    seen = set()
    for _ in range(6):
        optimizer.step()
        scheduler.step()
        head_lr, body_lr = (g["lr"] for g in optimizer.param_groups)
        assert body_lr == pytest.approx(0.25 * head_lr)
        seen.add(body_lr)
    assert len(seen) > 1  # scheduled, not left constant


def test_plateau_schedule_accepts_groups_added_mid_run() -> None:
    head, body = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.5)
    optimizer.add_param_group({"params": list(body.parameters()), "lr": 0.01, "lr_ratio": 0.1})
    extend_scheduler(scheduler)
    for loss in (1.0, 2.0, 3.0):
        scheduler.step(loss)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.025, 0.0025])


# -- speed switches ---------------------------------------------------------------------------
class RecordOutputDtype(Callback):
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.dtypes: set[torch.dtype] = set()
        pl_module.net.register_forward_hook(
            lambda module, inputs, output: self.dtypes.add(output.dtype))


@pytest.mark.slow
def test_bf16_mixed_precision_trains_on_cpu(run_dir: Path, digits_root: Path) -> None:
    cli = train.main([*base_args(digits_root, run_dir / "logs"), *TINY,
                      "--precision=bf16-mixed", "--accelerator=cpu",
                      "--trainer.callbacks+=tests.test_models.RecordOutputDtype"])

    record = next(c for c in cli.trainer.callbacks if isinstance(c, RecordOutputDtype))
    assert record.dtypes == {torch.bfloat16}  # the network really ran in bfloat16
    assert cli.trainer.global_step == 3
    assert torch.isfinite(cli.trainer.callback_metrics["test/loss"])


def copy_weights(source: ImageClassifier, **kwargs: Any) -> ImageClassifier:
    model = ImageClassifier(SmallCNN, num_classes=10, **kwargs)
    model.load_state_dict(source.state_dict())
    return model.eval()


def test_channels_last_keeps_the_outputs_and_stores_weights_nhwc() -> None:
    torch.manual_seed(0)
    plain = ImageClassifier(SmallCNN, num_classes=10).eval()
    nhwc = copy_weights(plain, channels_last=True)
    conv = nhwc.net.features[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    batch = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(nhwc(batch), plain(batch), atol=1e-5)


@pytest.mark.slow
def test_compiled_backbone_keeps_outputs_and_checkpoint_keys() -> None:
    torch.manual_seed(0)
    plain = ImageClassifier(SmallCNN, num_classes=10).eval()
    # The "eager" backend traces with TorchDynamo like the default one but skips code
    # generation (49 s on this CPU); what is tested is the switch, not the compiler.
    compiled = copy_weights(plain, compile_backbone={"backend": "eager"})
    assert compiled.net._compiled_call_impl is not None
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    batch = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(compiled(batch), plain(batch), atol=1e-6)


@pytest.mark.slow
def test_per_class_validation_accuracy_reaches_tensorboard_and_agrees_with_accuracy(
    run_dir: Path, digits_root: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli = train.main([*base_args(digits_root, run_dir / "logs"), *TINY])

    events = EventAccumulator(str(run_dir / "logs" / "digits" / "version_0"))
    events.Reload()
    names = cli.model.hparams["class_names"]
    tags = [f"val/acc_per_class/{name}" for name in names]
    assert set(tags) <= set(events.Tags()["scalars"])
    assert {f"test/acc_per_class/{name}" for name in names} <= set(events.Tags()["scalars"])
    per_class = torch.tensor([events.Scalars(tag)[-1].value for tag in tags])
    # Weighted by each class's share of the validation batches seen, they give val/acc.
    seen = cli.datamodule.datasets["val"].targets[: 2 * cli.datamodule.batch_size]
    counts = torch.bincount(seen, minlength=len(names)).float()
    overall = events.Scalars("val/acc")[-1].value
    assert float((per_class * counts).sum() / counts.sum()) == pytest.approx(overall, abs=1e-5)
