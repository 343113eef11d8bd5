"""A LightningModule written for another template, brought here: the shape of
lightning-hydra-template's ``MNISTLitModule`` (``net``, ``optimizer``, ``scheduler``, ``compile``
arguments, ``save_hyperparameters(logger=False)``, the optimizer and scheduler called in
``configure_optimizers``), written for these tests, not copied. With the change
``docs/own_module.md`` shows, it trains from YAML; as first copied, its hints ask for objects a
config cannot give, and that is one line naming what to write instead. Errors keep their cause,
and ``JSONARGPARSE_DEBUG`` as the README states it shows jsonargparse's full report."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from configs import messages
from tests.conftest import REPO, pythonpath_with, run_train_forked, run_train_subprocess

DOCS = REPO / "docs" / "own_module.md"

# The module as it arrives from the other template: hints that ask for an optimizer object and
# for the module torch.optim.lr_scheduler, the optimizer and schedule taken from self.hparams.
LHT_STYLE_MODULE = '''
import torch
from lightning import LightningModule
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import Accuracy


class DigitsLitModule(LightningModule):
    """Classifies 10 classes with any `net`; the optimizer and schedule come from the config."""

    def __init__(
        self,
        net: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler,
        compile: bool,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = net
        self.criterion = nn.CrossEntropyLoss()
        stages = ("fit", "val", "test")  # ModuleDict keys: "train" is a Module method
        self.accuracy = nn.ModuleDict(
            {stage: Accuracy(task="multiclass", num_classes=10) for stage in stages})
        self.mean_loss = nn.ModuleDict({stage: MeanMetric() for stage in stages})
        self.best_val_acc = MaxMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_start(self) -> None:
        # The sanity check's validation batches must not count.
        for metric in (self.mean_loss["val"], self.accuracy["val"], self.best_val_acc):
            metric.reset()

    def step(self, batch, stage: str, prefix: str) -> torch.Tensor:
        inputs, targets = batch
        logits = self(inputs)
        loss = self.criterion(logits, targets)
        self.mean_loss[stage](loss)
        self.accuracy[stage](logits.argmax(dim=1), targets)
        self.log(f"{prefix}/loss", self.mean_loss[stage], on_step=False, on_epoch=True)
        self.log(f"{prefix}/acc", self.accuracy[stage], on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self.step(batch, "fit", "train")

    def validation_step(self, batch, batch_idx):
        self.step(batch, "val", "val")

    def on_validation_epoch_end(self) -> None:
        self.best_val_acc(self.accuracy["val"].compute())
        self.log("val/acc_best", self.best_val_acc.compute(), sync_dist=True)

    def test_step(self, batch, batch_idx):
        self.step(batch, "test", "test")

    def setup(self, stage: str) -> None:
        if self.hparams.compile and stage == "fit":
            self.net = torch.compile(self.net)

    def configure_optimizers(self):
        optimizer = self.hparams.optimizer(params=self.trainer.model.parameters())
        if self.hparams.scheduler is not None:
            scheduler = self.hparams.scheduler(optimizer=optimizer)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss",
                                 "interval": "epoch", "frequency": 1},
            }
        return {"optimizer": optimizer}
'''

DENSE_NET = '''
import torch
from torch import nn


class DenseNet(nn.Module):
    """Three Linear + BatchNorm1d + ReLU blocks and a linear head, on flattened inputs."""

    def __init__(self, input_size: int = 784, lin1_size: int = 256, lin2_size: int = 256,
                 lin3_size: int = 256, output_size: int = 10) -> None:
        super().__init__()
        widths = [input_size, lin1_size, lin2_size, lin3_size]
        blocks = []
        for fan_in, fan_out in zip(widths, widths[1:]):
            blocks += [nn.Linear(fan_in, fan_out), nn.BatchNorm1d(fan_out), nn.ReLU()]
        self.layers = nn.Sequential(*blocks, nn.Linear(widths[-1], output_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.view(x.size(0), -1))
'''

# The model section of the config, as docs/own_module.md shows it for the other template's
# class paths (MNIST: input_size 784); here the digits' 8x8 gray images, 64 inputs.
MODEL_YAML = """model:
  class_path: {module}
  init_args:
    net:
      class_path: {net}
      init_args:
        input_size: {inputs}
        lin1_size: 64
        lin2_size: 128
        lin3_size: 64
        output_size: 10
    optimizer:
      class_path: torch.optim.Adam
      init_args: {{lr: 0.001, weight_decay: 0.0}}
    scheduler:
      class_path: torch.optim.lr_scheduler.ReduceLROnPlateau
      init_args: {{mode: min, factor: 0.1, patience: 10}}
    compile: false
"""

# docs/own_module.md's example of optimizers_from_config: weight-decay groups, and a schedule
# stepped every optimizer step whose length comes from the trainer.
STEPWISE_MODULE = '''
import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from models.optim import optimizers_from_config


class StepwiseModule(LightningModule):
    def __init__(self, num_classes: int, hidden: int = 64,
                 optimizer: OptimizerCallable = torch.optim.AdamW,
                 scheduler: LRSchedulerCallable | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.BatchNorm1d(hidden),
                                 nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return optimizers_from_config(self, self.optimizer, self.scheduler, interval="step")
'''

STEPWISE_YAML = """model:
  class_path: my_module.StepwiseModule
  init_args:
    optimizer:
      class_path: torch.optim.AdamW
      init_args: {lr: 0.01, weight_decay: 0.05}
    scheduler:
      class_path: torch.optim.lr_scheduler.OneCycleLR
      init_args: {max_lr: 0.01}
"""


def docs() -> str:
    return DOCS.read_text()


def docs_diff() -> str:
    """The ```diff block of docs/own_module.md: the change that makes the module train."""
    (block,) = re.findall(r"```diff\n(.*?)```", docs(), flags=re.DOTALL)
    return block


def apply_diff(source: str, diff: str) -> str:
    """Apply a diff of ``@@``-separated hunks (context `` ``, removed ``-``, added ``+``
    lines, no line numbers) to ``source``; every hunk must match exactly once."""
    for hunk in re.split(r"^@@.*\n", diff, flags=re.MULTILINE):
        lines = hunk.splitlines()
        if not lines:
            continue
        old = "".join(line[1:] + "\n" for line in lines if line[0] in " -")
        new = "".join(line[1:] + "\n" for line in lines if line[0] in " +")
        assert source.count(old) == 1, f"the docs' hunk does not match once:\n{old}"
        source = source.replace(old, new)
    return source


def data_yaml(digits_root: Path, logs: Path) -> str:
    to_float = ("      class_path: torchvision.transforms.v2.ToDtype\n"
                "      init_args: {dtype: torch.float32, scale: true}\n")
    return ("data:\n"
            "  class_path: datamodules.image_csv.ImageCSVDataModule\n"
            "  init_args:\n"
            f"    annotations: {digits_root / 'labels.csv'}\n"
            "    read_mode: GRAY\n"  # (1, 8, 8) images: 64 inputs
            "    num_workers: 0\n"
            f"    train_transforms:\n{to_float}"
            f"    eval_transforms:\n{to_float}"
            "trainer:\n"
            "  max_epochs: 2\n"
            "  enable_progress_bar: false\n"
            "  enable_model_summary: false\n"
            "  logger:\n"
            "    init_args:\n"
            f"      save_dir: {logs}\n")


# Module file (under lht_style/models/) -> its source: as copied, with the docs' change, and
# with the docs' change but the scheduler hint left as it was (it parses: a module is no type
# jsonargparse checks, so the model would get the config's Namespace).
def variants() -> dict[str, str]:
    fixed = apply_diff(LHT_STYLE_MODULE, docs_diff())
    return {
        "as_copied": LHT_STYLE_MODULE,
        "fixed": fixed,
        "scheduler_hint_left": fixed.replace("scheduler: LRSchedulerCallable,",
                                             "scheduler: torch.optim.lr_scheduler,"),
        # Only the hints changed: configure_optimizers still calls self.hparams.optimizer.
        "hints_only": LHT_STYLE_MODULE.replace(
            "import torch\n",
            "import torch\nfrom lightning.pytorch.cli import LRSchedulerCallable, "
            "OptimizerCallable\n", 1).replace(
            "optimizer: torch.optim.Optimizer,", "optimizer: OptimizerCallable,").replace(
            "scheduler: torch.optim.lr_scheduler,", "scheduler: LRSchedulerCallable,"),
    }


def write_project(root: Path, digits_root: Path) -> Path:
    """``lht_style/models/<variant>.py`` and ``lht_style/models/components/dense_net.py`` (the
    other template's layout) and ``<variant>.yaml`` for each, under ``root``."""
    models = root / "lht_style" / "models"
    (models / "components").mkdir(parents=True)
    (models / "components" / "dense_net.py").write_text(DENSE_NET)
    for name, source in variants().items():
        (models / f"{name}.py").write_text(source)
        model = MODEL_YAML.format(module=f"lht_style.models.{name}.DigitsLitModule",
                                  net="lht_style.models.components.dense_net.DenseNet", inputs=64)
        (root / f"{name}.yaml").write_text(data_yaml(digits_root, root / "logs" / name) + model)
    return root


def test_the_docs_show_the_config_the_change_and_the_helper_example() -> None:
    text = docs()
    assert MODEL_YAML.format(module="src.models.mnist_module.MNISTLitModule",
                             net="src.models.components.simple_dense_net.SimpleDenseNet",
                             inputs=784) in text
    assert STEPWISE_MODULE.strip() in text and STEPWISE_YAML in text
    diff = docs_diff()
    assert "+        optimizer: OptimizerCallable," in diff
    assert "+        self.optimizer = optimizer" in diff
    fixed = variants()["fixed"]
    assert "self.hparams.optimizer" not in fixed and "self.optimizer(params=" in fixed
    compile(fixed, "fixed.py", "exec")


@pytest.mark.slow
def test_the_module_with_the_docs_change_trains_from_yaml_and_tests(
    tmp_path: Path, digits_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = write_project(tmp_path, digits_root)
    result = run_train_subprocess(["--config", "fixed.yaml"], cwd=project, extra_path=project)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output
    (run,) = (project / "logs" / "fixed").glob("*/version_*")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["metrics"]["test/acc"] > 0.3, summary  # chance 0.1

    # What LightningCLI records as hyperparameters is the config, not the callables: this is
    # why self.hparams.optimizer(...) cannot work, and why the checkpoint reloads without
    # pickled objects.
    best = Path(summary["best_checkpoint"])
    hparams = torch.load(best, weights_only=True)["hyper_parameters"]
    assert hparams["optimizer"]["class_path"] == "torch.optim.Adam"
    assert hparams["optimizer"]["init_args"]["lr"] == 0.001
    assert hparams["scheduler"]["class_path"] == "torch.optim.lr_scheduler.ReduceLROnPlateau"
    monkeypatch.syspath_prepend(str(project))
    from lht_style.models.fixed import DigitsLitModule

    model = DigitsLitModule.load_from_checkpoint(best)
    assert type(model.net).__name__ == "DenseNet" and callable(model.optimizer)


@pytest.fixture(scope="module")
def refused_runs(tmp_path_factory: pytest.TempPathFactory, digits_root: Path
                 ) -> dict[str, subprocess.CompletedProcess[str]]:
    """Runs that stop before training, each its own train.py process, side by side (``@``:
    the project folder)."""
    project = write_project(tmp_path_factory.mktemp("outside"), digits_root)
    cases = {
        "as_copied": ["--config", "@as_copied.yaml"],
        "scheduler_hint_left": ["--config", "@scheduler_hint_left.yaml"],
        "hints_only": ["--config", "@hints_only.yaml"],
        # A bad init arg two class paths deep: the cause is the last of six lines.
        "deep_cause": ["--config", "@fixed.yaml",
                       "--model.init_args.net.init_args.lin1_size=sixty-four"],
        # A cause that is long by itself (jsonargparse names the whole callable type).
        "long_cause": ["--config", "@fixed.yaml",
                       "--model.init_args.scheduler.init_args.patiencee=3"],
    }
    folders = {name: project / "runs" / name for name in cases}  # a working folder each
    for folder in folders.values():
        folder.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", pythonpath_with(project))
        return run_train_forked({name: ([arg.replace("@", f"{project}/") for arg in args],
                                        folders[name]) for name, args in cases.items()})


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert result.stderr.rstrip().endswith(errors[0]) and "Traceback" not in result.stderr
    return errors[0]


@pytest.mark.slow
def test_hints_that_ask_for_an_optimizer_object_are_one_line_naming_the_callables(
    refused_runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    line = one_error_line(refused_runs["as_copied"])
    assert "lht_style.models.as_copied.DigitsLitModule" in line
    assert "optimizer: torch.optim.Optimizer" in line
    assert "optimizer: lightning.pytorch.cli.OptimizerCallable" in line
    assert "scheduler: lightning.pytorch.cli.LRSchedulerCallable" in line
    assert "self.optimizer = optimizer" in line and "docs/own_module.md" in line


@pytest.mark.slow
def test_a_hint_naming_the_lr_scheduler_module_is_refused_before_the_model_is_built(
    refused_runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    line = one_error_line(refused_runs["scheduler_hint_left"])
    assert "scheduler: torch.optim.lr_scheduler (a module)" in line
    assert "scheduler: lightning.pytorch.cli.LRSchedulerCallable" in line
    assert "OptimizerCallable" not in line  # that hint is right


@pytest.mark.slow
def test_an_error_deep_in_nested_class_paths_keeps_its_cause(
    refused_runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    line = one_error_line(refused_runs["deep_cause"])
    assert "lht_style.models.components.dense_net.DenseNet" in line
    assert 'Parser key "lin1_size": Expected a <class \'int\'>. Got value: sixty-four' in line


@pytest.mark.slow
def test_a_long_cause_is_kept_whole(
    refused_runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    line = one_error_line(refused_runs["long_cause"])
    assert "Option 'patiencee' is not accepted" in line
    assert 'Parser key "scheduler"' in line


def test_condense_error_shortens_the_path_never_the_cause() -> None:
    contexts = [f'Parser key "k{i}":\n  Problem with given class_path '
                f"'{'a_long_package_name.' * 4}C{i}':" for i in range(4)]
    cause = "Option 'x' is not accepted. Got value: " + "Namespace(v=1) " * 30
    message = "\n".join([*contexts, cause, "  Given value: " + "y" * 500])
    line = messages.condense_error(message)
    assert line.startswith('Parser key "k0":') and "Option 'x' is not accepted" in line
    assert "C3':" in line and "…" in line and "Given value" not in line
    assert len(line) <= 400
    assert messages.condense_error("unrecognized arguments: --x") == "unrecognized arguments: --x"


@pytest.mark.slow
def test_readme_debug_value_shows_the_full_report(tmp_path: Path) -> None:
    values = set(re.findall(r"JSONARGPARSE_DEBUG=(\w+)", (REPO / "README.md").read_text()))
    assert values == {"true"}, values
    (value,) = values
    result = run_train_subprocess(["--bad_option"], cwd=tmp_path,
                                  env={**os.environ, "JSONARGPARSE_DEBUG": value})
    # jsonargparse's own report: the error raised with its traceback, not the one line.
    assert result.returncode != 0
    assert "argparse.ArgumentError: unrecognized arguments: --bad_option" in result.stderr
    assert "Traceback" in result.stderr and "train.py: error:" not in result.stderr


@pytest.mark.slow
def test_a_debug_value_jsonargparse_refuses_is_one_line(tmp_path: Path) -> None:
    result = run_train_subprocess(["--bad_option"], cwd=tmp_path,
                                  env={**os.environ, "JSONARGPARSE_DEBUG": "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "train.py: error: JSONARGPARSE_DEBUG=1 is not a value jsonargparse takes: "
        "JSONARGPARSE_DEBUG=true shows its full report, false or unset one line"]


class CallsHparams:
    """configure_optimizers as the other template writes it, with what LightningCLI leaves in
    hparams: the config."""

    hparams = type("Hparams", (), {"optimizer": {"class_path": "torch.optim.Adam"}})()

    def configure_optimizers(self):
        return self.hparams.optimizer(params=[])


@pytest.mark.slow
def test_a_module_calling_hparams_optimizer_stops_with_one_line_naming_the_fix(
    refused_runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    result = refused_runs["hints_only"]
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("train.py:")]
    assert line.startswith("train.py: error: configure_optimizers (")
    assert "calls self.hparams.optimizer" in line and "self.optimizer(...)" in line
    assert "docs/own_module.md" in line


def test_calling_hparams_optimizer_is_explained_in_one_line() -> None:
    with pytest.raises(TypeError) as raised:
        CallsHparams().configure_optimizers()
    line = messages.explain_hparams_call(raised.value)
    assert line is not None and "\n" not in line
    assert "calls self.hparams.optimizer" in line and "self.optimizer = optimizer" in line
    assert messages.explain_hparams_call(TypeError("'dict' object is not callable")) is None


@pytest.mark.slow
def test_the_docs_helper_example_sizes_a_stepwise_schedule_and_splits_weight_decay(
    tmp_path: Path, digits_root: Path
) -> None:
    (tmp_path / "my_module.py").write_text(STEPWISE_MODULE)
    (tmp_path / "stepwise.yaml").write_text(data_yaml(digits_root, tmp_path / "logs")
                                            + STEPWISE_YAML)
    result = run_train_subprocess(["--config", "stepwise.yaml",
                                   "--trainer.limit_train_batches=5"],
                                  cwd=tmp_path, extra_path=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Testing skipped: StepwiseModule has no test_step." in output
    (run,) = (tmp_path / "logs").glob("*/version_*")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    (schedule,) = state["lr_schedulers"]
    assert schedule["total_steps"] == 10  # 2 epochs x 5 batches, from the trainer
    assert schedule["last_epoch"] == 10  # stepped every optimizer step
    decays = [group["weight_decay"] for group in state["optimizer_states"][0]["param_groups"]]
    assert decays == [0.05, 0.0]  # weights; biases and BatchNorm
