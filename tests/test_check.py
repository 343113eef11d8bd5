"""``python train.py check``: the contract checks pass on a sound module and fail on the right
check, in one line, for a module with one fault. The modules are a user's, written in the test's
folder: their own metric names, a lazy layer, no test_step, on the digits."""

import sys
from pathlib import Path

import pytest

import check
import train
from tests.conftest import run_check

USER_MODULES = '''
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import nn


class Net(LightningModule):
    def __init__(self, hidden: int = 64, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)
        self.accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=10)

    def forward(self, x):
        return self.head(self.features(x.float()))

    def loss(self, batch):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("fit_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.accuracy(self(x), y)
        self.log("holdout_acc", self.accuracy)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class UnusedLayer(Net):
    def __init__(self, hidden: int = 64, lr: float = 0.01) -> None:
        super().__init__(hidden, lr)
        self.spare = nn.Linear(hidden, hidden)


class AlwaysDropout(Net):
    def forward(self, x):
        return self.head(F.dropout(self.features(x.float()), 0.5, training=True))


class DetachedLoss(Net):
    def loss(self, batch):
        x, y = batch
        return F.cross_entropy(self(x).detach(), y)


class RandomForward(Net):
    def forward(self, x):
        return super().forward(x) + 0.1 * torch.rand(len(x), 10)


class NoisyTraining(Net):
    def loss(self, batch):
        x, y = batch
        return F.cross_entropy(self(x + 0.1 * torch.randn_like(x)), y)


class IgnoresConfig(Net):
    def __init__(self, hidden: int = 64, optimizer: OptimizerCallable = torch.optim.Adam
                 ) -> None:
        super().__init__(hidden)
        self.optimizer = optimizer

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
'''

IN_PROCESS = [c for c in check.CHECKS if c != "ddp"]  # ddp runs 2 processes: its own test


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my_nets.py").write_text(USER_MODULES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_nets", None)


def user_config(folder: Path, digits_root: Path, model: str, extra: str = "") -> str:
    path = folder / f"{model}.yaml"
    path.write_text(f"model:\n  class_path: my_nets.{model}\n{extra}"
                    f"data:\n  class_path: datamodules.digits.DigitsDataModule\n"
                    f"  init_args:\n    root: {digits_root}\n")
    return f"--config={path}"


def test_unused_layer_fails_gradients_naming_the_layer(
    user_folder: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = user_config(user_folder, digits_root, "UnusedLayer")
    code, rows = run_check([config, "--checks=builds,one_batch,gradients"], capsys)
    assert code == 1
    assert rows["gradients"][0] == "FAIL"
    assert rows["gradients"][1].startswith("2 get no gradient (spare.weight, spare.bias)")
    assert rows["builds"][0] == rows["one_batch"][0] == "pass"
    assert "batch [float32[16, 1, 8, 8], int64[16]]; output [float32[16, 10]]" in (
        rows["one_batch"][1])


def test_random_numbers_in_forward_fail_eval_mode(
    user_folder: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = user_config(user_folder, digits_root, "RandomForward")
    code, rows = run_check([config, "--checks", "eval_mode,gradients"], capsys)
    assert code == 1
    assert rows["eval_mode"] == ("FAIL", "two eval-mode calls on the same batch differ: dropout "
                                         "applied with training=True, or random numbers drawn "
                                         "in forward?")
    assert rows["gradients"][0] == "pass"


def test_an_unknown_check_is_refused_naming_the_choices(capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["check", "--checks=learns,speed"])
    assert exit_info.value.code == 2
    assert "unknown check(s) ['speed']; choose from builds, one_batch" in capsys.readouterr().err


FAULTS = {
    # module: (the check that must fail, the start of its line, checks that must still pass)
    "UnusedLayer": ("gradients", "2 get no gradient (spare.weight, spare.bias)",
                    ["learns", "eval_mode", "reproducible", "checkpoint", "resume", "export"]),
    "AlwaysDropout": ("eval_mode", "two eval-mode calls on the same batch differ",
                      ["learns", "gradients", "reproducible", "checkpoint", "resume"]),
    "DetachedLoss": ("learns", "the loss does not depend on any parameter",
                     ["builds", "one_batch", "eval_mode"]),
    "RandomForward": ("eval_mode", "two eval-mode calls on the same batch differ",
                      ["learns", "gradients", "reproducible", "checkpoint", "resume"]),
    "IgnoresConfig": ("optimizer", "the config names torch.optim.AdamW but configure_optimizers "
                                   "returns torch.optim.sgd.SGD",
                      ["learns", "gradients", "eval_mode", "reproducible", "resume"]),
}


@pytest.mark.slow
def test_a_sound_user_module_passes_every_check(
    user_folder: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, rows = run_check([user_config(user_folder, digits_root, "Net")], capsys)
    assert code == 0, rows
    assert {name for name, (status, _) in rows.items() if status == "pass"} == (
        set(check.CHECKS) - {"optimizer", "predict"})
    assert rows["optimizer"] == ("skipped", "the config names no optimizer for the model")
    assert rows["predict"][0] == "skipped"
    assert not (user_folder / "logs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("module", list(FAULTS))
def test_a_module_with_one_fault_fails_that_check_in_one_line(
    user_folder: Path, digits_root: Path, capsys: pytest.CaptureFixture[str], module: str
) -> None:
    failing, line, passing = FAULTS[module]
    extra = ("  init_args:\n    optimizer: torch.optim.AdamW\n" if module == "IgnoresConfig"
             else "")
    code, rows = run_check([user_config(user_folder, digits_root, module, extra),
                            f"--checks={','.join(IN_PROCESS)}"], capsys)
    assert code == 1
    assert rows[failing][0] == "FAIL" and rows[failing][1].startswith(line), rows[failing]
    assert "\n" not in rows[failing][1]
    assert all(rows[name][0] == "pass" for name in passing), rows


TASK_CONFIGS = {"multiclass": "digits.yaml", "multilabel": "examples/digit_tags.yaml",
                "segmentation": "examples/digit_strokes.yaml",
                "regression": "examples/diabetes.yaml"}


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASK_CONFIGS))
def test_the_templates_own_module_passes_every_check_for_each_task(
    run_dir: Path, capsys: pytest.CaptureFixture[str], task: str
) -> None:
    config = check.REPO / "configs" / TASK_CONFIGS[task]
    code, rows = run_check([f"--config={config}", f"--checks={','.join(IN_PROCESS)}"], capsys)
    assert code == 0, rows
    assert {name for name, (status, _) in rows.items() if status != "pass"} == {"predict"}
    assert f"task='{task}'" in rows["builds"][1]


@pytest.mark.slow
def test_resume_fails_when_the_random_state_is_left_out_of_the_checkpoint(
    user_folder: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Noise drawn in training_step: exact only with RNGState in the callbacks list."""
    with_rng = user_config(user_folder, digits_root, "NoisyTraining")
    code, rows = run_check([with_rng, "--checks=reproducible,resume"], capsys)
    assert code == 0 and rows["resume"][0] == "pass", rows
    no_callbacks = user_folder / "no_callbacks.yaml"
    no_callbacks.write_text("trainer:\n  callbacks: []\n")
    code, rows = run_check([with_rng, f"--config={no_callbacks}",
                            "--checks=reproducible,resume"], capsys)
    assert code == 1 and rows["reproducible"][0] == "pass"
    assert rows["resume"][0] == "FAIL"
    assert rows["resume"][1].startswith("resumed at step 3 of 6, the weights differ")
    assert rows["resume"][1].endswith("without callbacks.rng_state.RNGState")


@pytest.mark.slow
@pytest.mark.ddp
def test_the_default_run_passes_every_check_including_two_processes(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, rows = run_check([f"--data.init_args.root={digits_root}"], capsys)
    assert code == 0, rows
    assert rows["ddp"] == ("pass", "3 steps on 2 processes: identical weights, different batches")
    assert rows["resume"][0] == rows["reproducible"][0] == rows["learns"][0] == "pass"
    assert not (run_dir / "logs").exists()
