"""configure_optimizers in real short fits through train.main: the LR of every optimizer step
against the closed-form schedule, weight-decay groups, clipping, the grad-norm log, L1 and the
LR finder."""

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image
from torch import Tensor, nn
from torch.optim import Optimizer

import train
from tests.conftest import REPO, base_args, run_train_subprocess

CONFIGS = REPO / "configs"
RECORD = "--trainer.callbacks+=tests.test_optimization.RecordLR"


class RecordLR(Callback):
    """The LR of every param group on every optimizer step (the LR that step uses: schedulers
    step after the optimizer). With ``path``, rank 0 writes them to JSON at the end of fit."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.lrs: list[list[float]] = []
        self.epochs: list[int] = []

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        self.lrs.append([group["lr"] for group in optimizer.param_groups])
        self.epochs.append(trainer.current_epoch)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.path and trainer.is_global_zero:
            Path(self.path).write_text(json.dumps({"lrs": self.lrs, "world": trainer.world_size,
                                                   "steps": trainer.estimated_stepping_batches}))


# Small batches and one validation batch: these tests are about the optimizer, not accuracy.
FAST = ["--data.init_args.batch_size=16", "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0"]


def fit(digits_root: Path, run_dir: Path, *args: str, record: bool = True) -> Any:
    """``python train.py fit`` in process, recording the LR of every step."""
    # RECORD last: a config in ARGS that lists callbacks would replace it.
    return train.main(["fit", *base_args(digits_root, run_dir / "logs"), *FAST, *args,
                       *([RECORD] if record else [])])


def the(cli: Any, kind: type[Callback]) -> Any:
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, kind)]
    return callback


def lrs_of(cli: Any) -> list[float]:
    lrs = the(cli, RecordLR).lrs
    assert all(len(set(step)) == 1 for step in lrs), "param groups got different LRs"
    return [step[0] for step in lrs]


# -- closed forms, written from the papers / PyTorch docs, not from models/schedulers.py -----
def one_cycle(max_lr: float, total: int, pct_start: float = 0.3, div: float = 25.0,
              final_div: float = 1e4) -> list[float]:
    """torch OneCycleLR (cos, two phases): step s (0-based) of ``total``."""
    initial, final = max_lr / div, max_lr / div / final_div
    up_end, down_end = pct_start * total - 1, total - 1

    def cos(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))

    return [cos(initial, max_lr, s / up_end) if s <= up_end
            else cos(max_lr, final, (s - up_end) / (down_end - up_end)) for s in range(total)]


def warmup_then(decay: str, peak: float, total: int, warmup: int) -> list[float]:
    """Step k (1-based): k/W of the peak for k <= W, then decay from the peak step to 0 on the
    last step."""
    top = max(warmup, 1)
    out = []
    for k in range(1, total + 1):
        if k < top:
            out.append(peak * k / warmup)
            continue
        p = (k - top) / (total - top)
        out.append(peak * (0.5 * (1 + math.cos(math.pi * p)) if decay == "cosine" else 1 - p))
    return out


# -- OneCycle, the default -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "total"),
    [
        (["--max_epochs=2", "--trainer.limit_train_batches=4"], 8),
        (["--max_epochs=1", "--trainer.limit_train_batches=8",
          "--trainer.accumulate_grad_batches=2"], 4),
        (["--max_epochs=5", "--max_steps=5", "--trainer.limit_train_batches=4"], 5),
    ],
    ids=["1-process", "accumulate-2", "max-steps"],
)
@pytest.mark.slow
def test_default_one_cycle_follows_its_formula_and_ends_at_final_lr_on_the_last_step(
    run_dir: Path, digits_root: Path, args: list[str], total: int
) -> None:
    cli = fit(digits_root, run_dir, *args)

    lrs = lrs_of(cli)
    assert cli.trainer.global_step == total
    assert lrs == pytest.approx(one_cycle(0.01, total), rel=1e-9)
    assert lrs[-1] == pytest.approx(0.01 / 25 / 1e4, rel=1e-9)
    assert max(lrs) < 0.01 + 1e-12


@pytest.mark.ddp
@pytest.mark.slow
def test_one_cycle_in_real_two_process_ddp_is_sized_per_rank_and_ends_at_final_lr(
    tmp_path: Path, digits_root: Path
) -> None:
    from datamodules.digits import DigitsDataModule

    data = DigitsDataModule(root=digits_root)
    data.setup("fit")
    per_rank = math.ceil(len(data.datasets["train"]) / 2)  # DistributedSampler pads to even
    total = math.ceil(per_rank / 64)  # one full epoch at batch_size 64 per device (set below)
    out = tmp_path / "lrs.json"

    result = run_train_subprocess(
        ["fit", *base_args(digits_root, tmp_path / "logs"), "--devices=2", "--max_epochs=1",
         "--data.init_args.batch_size=64",
         "--trainer.limit_val_batches=1", RECORD,
         f"--trainer.callbacks.init_args.path={out}"],
        cwd=tmp_path,
    )

    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    record = json.loads(out.read_text())
    assert record["world"] == 2
    lrs = [step[0] for step in record["lrs"]]
    assert len(lrs) == record["steps"] == total  # half the 1-process length, not all of it
    assert lrs == pytest.approx(one_cycle(0.01, total), rel=1e-9)
    assert lrs[-1] == pytest.approx(0.01 / 25 / 1e4, rel=1e-9)


# -- the other schedules, each against its formula in a real fit -------------------------
SCHED = "--model.init_args.scheduler"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([f"{SCHED}=models.schedulers.WarmupCosineLR", f"{SCHED}.init_args.warmup=3"],
         warmup_then("cosine", 0.01, 8, warmup=3)),
        ([f"{SCHED}=models.schedulers.WarmupLinearLR", f"{SCHED}.init_args.warmup=3"],
         warmup_then("linear", 0.01, 8, warmup=3)),
        ([f"{SCHED}=torch.optim.lr_scheduler.MultiStepLR", f"{SCHED}.init_args.milestones=[1]",
          f"{SCHED}.init_args.gamma=0.1", "--model.init_args.scheduler_interval=epoch"],
         [0.01] * 4 + [0.001] * 4),  # per epoch: the second epoch's 4 steps are at 0.1x
    ],
    ids=["warmup-cosine", "warmup-linear", "multistep-per-epoch"],
)
@pytest.mark.slow
def test_schedule_gives_its_closed_form_lr_on_every_step(
    run_dir: Path, digits_root: Path, args: list[str], expected: list[float]
) -> None:
    cli = fit(digits_root, run_dir, "--max_epochs=2", "--trainer.limit_train_batches=4", *args)

    assert lrs_of(cli) == pytest.approx(expected, rel=1e-9)


@pytest.mark.slow
def test_warmup_reaches_the_peak_exactly_on_its_last_step(
    run_dir: Path, digits_root: Path
) -> None:
    cli = fit(digits_root, run_dir, f"--config={CONFIGS / 'optim_sgd_warmup_cosine.yaml'}",
              "--max_epochs=1", "--trainer.limit_train_batches=20")  # warmup 0.1 = 2 steps
    lrs = lrs_of(cli)

    peak = 0.1  # the config's SGD lr
    assert lrs == pytest.approx(warmup_then("cosine", peak, 20, warmup=2), rel=1e-9, abs=1e-15)
    assert lrs[1] == pytest.approx(peak, rel=1e-12)  # step 2 = 0.1 x 20 steps
    assert lrs[0] == pytest.approx(peak / 2)
    assert all(lr < peak for i, lr in enumerate(lrs) if i != 1)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-15)
    assert isinstance(cli.trainer.optimizers[0], torch.optim.SGD)
    assert cli.trainer.optimizers[0].defaults["nesterov"] is True


class ScriptedMetric(Callback):
    """Logs ``signal`` = a fixed sequence, one value per validation epoch, so the plateau test
    knows exactly which epochs are bad (val/loss moves with BatchNorm statistics even at LR 0).
    """

    VALUES = (1.0, 0.5, 0.6, 0.6, 0.6, 0.6)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            pl_module.log("signal", self.VALUES[trainer.current_epoch])


@pytest.mark.slow
def test_plateau_reduces_the_lr_only_after_patience_bad_epochs(
    run_dir: Path, digits_root: Path
) -> None:
    cli = fit(digits_root, run_dir, f"--config={CONFIGS / 'optim_plateau.yaml'}", "--max_epochs=6",
              "--trainer.limit_train_batches=2", "--model.init_args.scheduler_monitor=signal",
              "--trainer.callbacks+=tests.test_optimization.ScriptedMetric")

    record = the(cli, RecordLR)
    per_epoch = {e: lr[0] for e, lr in zip(record.epochs, record.lrs, strict=True)}
    # Epoch 1 improves; epochs 2, 3, 4 do not. patience=2: reduce once bad epochs exceed 2,
    # i.e. after epoch 4, so epoch 5 is the first at half the LR.
    assert per_epoch == pytest.approx({0: 3e-3, 1: 3e-3, 2: 3e-3, 3: 3e-3, 4: 3e-3, 5: 1.5e-3})


@pytest.mark.slow
def test_a_schedule_that_cannot_be_sized_fails_with_a_clear_message(
    run_dir: Path, digits_root: Path
) -> None:
    with pytest.raises(ValueError, match=r"OneCycleLR needs a finite number of steps.*max_epochs"):
        fit(digits_root, run_dir, "--max_epochs=-1")
    with pytest.raises(ValueError, match=r"WarmupCosineLR needs a finite number of steps"):
        fit(digits_root, run_dir, "--max_epochs=-1",
            f"{SCHED}=models.schedulers.WarmupCosineLR")


# -- parameter groups -----------------------------------------------------------------------
class GroupsNet(nn.Module):
    """Every kind of parameter the decay rules care about: conv/linear weights, biases,
    BatchNorm, a LayerNorm over 3 dims (n-D weight), a frozen conv and a listed name."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.frozen = nn.Conv2d(1, 4, 3, padding=1)
        self.frozen.requires_grad_(False)
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        # 12x12: the default digits pipeline pads the 8x8 images by 2.
        self.ln = nn.LayerNorm([8, 12, 12])
        self.pos = nn.Parameter(torch.zeros(1, 8, 12, 12))
        self.head = nn.Linear(8, num_classes)

    def no_weight_decay(self) -> list[str]:
        return ["pos"]

    def forward(self, x: Tensor) -> Tensor:
        x = self.ln(self.bn(self.conv(self.frozen(x))) + self.pos)
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("optimizer", "init_args", "check", "decay_all"),
    [
        ("SGD", ["momentum=0.9", "nesterov=true"], {"momentum": 0.9, "nesterov": True}, False),
        ("Adam", ["betas=[0.9,0.98]"], {"betas": (0.9, 0.98)}, False),
        ("AdamW", ["eps=1e-6"], {"eps": 1e-6}, False),
        ("RAdam", ["decoupled_weight_decay=true"], {"decoupled_weight_decay": True}, False),
        ("RMSprop", ["alpha=0.9", "momentum=0.5"], {"alpha": 0.9, "momentum": 0.5}, True),
    ],
    ids=["sgd", "adam", "adamw", "radam", "rmsprop-decay-norm-and-bias"],
)
@pytest.mark.slow
def test_optimizer_from_config_gets_no_decay_on_bias_and_norm_and_the_configured_on_weights(
    run_dir: Path, digits_root: Path, optimizer: str, init_args: list[str],
    check: dict[str, Any], decay_all: bool,
) -> None:
    opt = "--model.init_args.optimizer"
    cli = fit(digits_root, run_dir, "--max_epochs=1", "--trainer.limit_train_batches=1",
              "--model.init_args.backbone=tests.test_optimization.GroupsNet",
              f"{opt}=torch.optim.{optimizer}", *[f"{opt}.init_args.{a}" for a in init_args],
              f"{opt}.init_args.weight_decay=0.02",
              f"--model.init_args.weight_decay_norm_and_bias={str(decay_all).lower()}",
              record=False)
    model, built = cli.model, cli.trainer.optimizers[0]

    assert type(built) is getattr(torch.optim, optimizer)
    assert {k: built.defaults[k] for k in check} == check
    assert cli.trainer.global_step == 1
    grouped = [id(p) for g in built.param_groups for p in g["params"]]
    decay_of = {id(p): g["weight_decay"] for g in built.param_groups for p in g["params"]}
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(grouped) == trainable, "a trainable parameter is missing, or a frozen one is in"
    expected = {
        "net.conv.weight": 0.02, "net.head.weight": 0.02, "net.pos": 0.0,
        **dict.fromkeys(["net.conv.bias", "net.bn.weight", "net.bn.bias", "net.ln.weight",
                         "net.ln.bias", "net.head.bias"], 0.02 if decay_all else 0.0),
    }
    named = dict(model.named_parameters())
    assert {name: decay_of[id(named[name])] for name in expected} == expected
    assert model.net.ln.weight.ndim == 3  # caught as a norm parameter, not by ndim <= 1


# -- clipping and the pre-clip norm ---------------------------------------------------------
class RecordGrads(Callback):
    """Gradients before clipping (``on_before_optimizer_step`` runs before Lightning clips)
    and after it (at batch end: the optimizer does not touch ``.grad`` and the next zero_grad
    comes with the next batch)."""

    def __init__(self) -> None:
        self.pre: list[list[Tensor]] = []
        self.post: list[list[Tensor]] = []
        self.weights: list[list[Tensor]] = []
        self.names: list[str] = []

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        self.pre.append(_grads(pl_module))
        self.names = [n for n, p in pl_module.named_parameters() if p.grad is not None]
        self.weights.append([p.detach().clone() for p in pl_module.parameters()
                             if p.grad is not None])

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.post.append(_grads(pl_module))


def _grads(module: nn.Module) -> list[Tensor]:
    return [p.grad.detach().clone() for p in module.parameters() if p.grad is not None]


def _total_norm(grads: list[Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()


@pytest.mark.slow
def test_clipping_by_norm_bounds_the_total_norm_and_the_logged_norm_is_the_pre_clip_one(
    run_dir: Path, digits_root: Path
) -> None:
    limit = 0.05
    cli = fit(digits_root, run_dir, f"--config={CONFIGS / 'optim_sgd_warmup_cosine.yaml'}",
              "--max_epochs=1", "--trainer.limit_train_batches=4",
              f"--trainer.gradient_clip_val={limit}", "--trainer.log_every_n_steps=2",
              "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
              "--trainer.callbacks+=tests.test_optimization.RecordGrads", record=False)
    grads = the(cli, RecordGrads)

    assert len(grads.pre) == len(grads.post) == 4
    pre_norms = []
    for pre, post in zip(grads.pre, grads.post, strict=True):
        norm = _total_norm(pre)
        pre_norms.append(norm)
        assert norm > limit  # clipping had something to do
        assert _total_norm(post) <= limit * (1 + 1e-5)
        for g_pre, g_post in zip(pre, post, strict=True):  # rescaled, direction kept
            torch.testing.assert_close(g_post, g_pre * (limit / (norm + 1e-6)))
    # GradNormLogger (from the config): every 2nd step, the norm before clipping.
    (metrics_csv,) = (run_dir / "logs").rglob("metrics.csv")
    logged = [float(row["grad_norm/total"]) for row in csv.DictReader(metrics_csv.open())
              if row.get("grad_norm/total")]
    assert logged == pytest.approx([pre_norms[1], pre_norms[3]], rel=1e-5)


@pytest.mark.slow
def test_clipping_by_value_bounds_every_gradient_entry(run_dir: Path, digits_root: Path) -> None:
    limit = 1e-3
    cli = fit(digits_root, run_dir, "--max_epochs=1", "--trainer.limit_train_batches=2",
              f"--trainer.gradient_clip_val={limit}", "--trainer.gradient_clip_algorithm=value",
              "--trainer.callbacks+=tests.test_optimization.RecordGrads", record=False)
    grads = the(cli, RecordGrads)

    assert len(grads.post) == 2
    for pre, post in zip(grads.pre, grads.post, strict=True):
        assert max(g.abs().max().item() for g in pre) > limit
        bound = torch.tensor(limit)  # float32, as the gradients are
        assert all((g.abs() <= bound).all() for g in post)
        for g_pre, g_post in zip(pre, post, strict=True):
            torch.testing.assert_close(g_post, g_pre.clamp(-limit, limit))


# -- L1 -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_l1_penalty_adds_its_gradient_to_conv_and_linear_weights_only(
    run_dir: Path, digits_root: Path
) -> None:
    grads, weights = {}, {}
    for l1 in (0.0, 0.01):
        cli = fit(digits_root, run_dir / str(l1), "--max_epochs=1",
                  "--trainer.limit_train_batches=1", f"--model.init_args.l1_penalty={l1}",
                  "--trainer.callbacks+=tests.test_optimization.RecordGrads", record=False)
        record = the(cli, RecordGrads)
        (grads[l1],), (weights[l1],), names = record.pre, record.weights, record.names
    model = cli.model
    assert "train/l1_step" in cli.trainer.callback_metrics

    # Same seed, batch and initial weights: the only difference is d(0.01 * sum|w|)/dw.
    assert len(names) == len(grads[0.0]) == len(grads[0.01])
    penalised = 0
    for name, g0, g1, w in zip(names, grads[0.0], grads[0.01], weights[0.0], strict=True):
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(module, (nn.Conv2d, nn.Linear)) and name.endswith("weight"):
            penalised += 1
            torch.testing.assert_close(g1 - g0, 0.01 * w.sign(), atol=1e-6, rtol=0, msg=name)
        else:
            torch.testing.assert_close(g1, g0, msg=name)
    assert penalised == 4  # SmallCNN: 3 convs + the head


def test_l1_penalty_covers_the_weights_a_fine_tuning_callback_unfreezes() -> None:
    from models.classifier import ImageClassifier

    model = ImageClassifier(num_classes=3, in_channels=1, l1_penalty=0.01).eval()
    batch = (torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    model.net.features.requires_grad_(False)  # what FreezeBackbone does first
    frozen = model.training_step(batch, 0)
    model.net.features.requires_grad_(True)  # and at its unfreeze epoch
    unfrozen = model.training_step(batch, 0)
    conv_weights = [p for p in model.net.features.parameters() if p.ndim > 1]
    assert len(conv_weights) == 3
    torch.testing.assert_close(unfrozen - frozen,
                               0.01 * sum(p.abs().sum() for p in conv_weights))


# -- LR finder ------------------------------------------------------------------------------
def test_lr_finder_config_prints_a_suggestion_saves_a_png_and_stops(
    run_dir: Path, digits_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from callbacks.lr_finder import LRRangeTest

    cli = fit(digits_root, run_dir, f"--config={CONFIGS / 'lr_find.yaml'}",
              "--max_epochs=1", "--trainer.limit_train_batches=20",
              "--trainer.callbacks.init_args.num_training_steps=20", record=False)

    finder = the(cli, LRRangeTest)
    assert finder.suggested_lr is not None and 1e-5 <= finder.suggested_lr <= 1.0
    png = Path(cli.trainer.log_dir) / "lr_find.png"
    captured = capsys.readouterr()
    out = captured.out
    assert f"suggested learning rate {finder.suggested_lr:.3g}" in out
    # Not a terminal: no \r-redrawn tqdm bar, and no empty metrics table (fit ended early).
    assert "Finding best initial lr" not in captured.err and "\r" not in captured.err
    assert "Metrics" not in out and "Run summary" in out
    assert str(png) in out
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (640, 420)
    assert cli.trainer.global_step == 0  # weights restored, fit ended after the test
    assert not list((run_dir / "logs").rglob("*.ckpt"))
