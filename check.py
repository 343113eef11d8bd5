"""``python train.py check [the options of fit]``: will this model learn from this data, save,
resume and scale? A contract test of the configured LightningModule + datamodule in a minute or
two, before hours of training, printed as a table; exit status 0 only when every check passes.

    python train.py check                                # the default run
    python train.py check --config my_run.yaml           # your module and data
    python train.py check --checks learns,gradients      # a subset (names below)

Every check runs on the CPU, in full precision, in a temporary folder (nothing lands in
``logs/``), from a fresh instance built from the config with the config's seed:

builds        the config parses, model and data instantiate; the sizes the data gave the model
one_batch     a training batch's structure, shapes and dtypes; the output shape; a finite loss
learns        LEARN_STEPS steps on one fixed batch bring its loss below LEARN_RATIO of the first
optimizer     the optimizer in use is the class the config names (configure_optimizers uses it)
gradients     every trainable parameter gets a finite, non-zero gradient in the first step
eval_mode     in eval mode an output does not change with repeated calls or the rest of the batch
reproducible  two short fits with the same seed end with bit-identical weights
checkpoint    ``load_from_checkpoint(path)`` with no other argument gives the same outputs
resume        FIT_STEPS // 2 steps, saved mid-epoch, resumed to FIT_STEPS: bit-identical weights
ddp           2 processes (gloo) for a few steps: identical weights, different batches per rank
predict       ``trainer.predict`` returns outputs for the configured predict data
export        TorchScript export of ``forward`` matches PyTorch (models.export's parity check)

This file is an option: delete it and ``train.py`` loses only the ``check`` command.
"""

import contextlib
import hashlib
import importlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor

CHECKS = ("builds", "one_batch", "learns", "optimizer", "gradients", "eval_mode", "reproducible",
          "checkpoint", "resume", "ddp", "predict", "export")
LEARN_STEPS = 50
LEARN_RATIO = 0.7  # "learns": the loss over the last 5 steps is below 70 % of the first
FIT_STEPS = 6  # reproducible / resume: 2 epochs of 4 batches, the resume saved inside epoch 1
FIT_BATCHES = 4
DDP_STEPS = 3
TOLERANCE = 1e-5
REPO = Path(__file__).resolve().parent


@dataclass
class Result:
    name: str
    status: str  # pass, FAIL or skipped
    detail: str = ""
    seconds: float = 0.0


class CheckFailed(Exception):
    """A check's verdict: the one line saying what is wrong and where."""


class CheckSkipped(Exception):
    """The check does not apply; the message says why."""


# -- building fresh instances from the config ------------------------------------------------
class Builder:
    """Fresh CLI instances (model, datamodule, trainer) from the user's options, each seeded
    as ``train.py fit`` seeds it, with the trainer confined to one CPU process and ``folder``."""

    def __init__(self, options: list[str], folder: Path) -> None:
        import train

        self.folder = folder
        argv, self.defaults = train.prepared(["fit", *options], "fit")
        self.options = argv[1:]

    def overrides(self, name: str, steps: int, batches: int | float) -> list[str]:
        logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                  "init_args": {"save_dir": str(self.folder / "logs"), "name": name}}
        return [f"--trainer.logger={json.dumps(logger)}",
                f"--trainer.default_root_dir={self.folder}", "--trainer.accelerator=cpu",
                "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto",
                "--trainer.precision=32-true", f"--trainer.max_steps={steps}",
                "--trainer.max_epochs=-1", f"--trainer.limit_train_batches={batches}",
                # One validation batch per epoch: callbacks and schedulers may watch val/...
                "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
                "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                "--trainer.fast_dev_run=false", "--trainer.overfit_batches=0.0"]

    def build(self, name: str, steps: int = FIT_STEPS, batches: int | float = FIT_BATCHES
              ) -> Any:
        import train

        return train.TemplateCLI(
            args=[*self.options, *self.overrides(name, steps, batches)], run=False,
            parser_kwargs=self.defaults, seed_everything_default=0,
            auto_configure_optimizers=False, save_config_callback=None)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Lightning's info lines and warnings would bury the table; errors still surface."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


# -- what the checks look at -----------------------------------------------------------------
def inputs_of(batch: Any) -> Tensor:
    """The model's input in a batch: the batch itself, or its first entry ((x, y) batches)."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise CheckSkipped(f"the batch is a {type(batch).__name__}; this check needs a tensor or "
                       "an (inputs, ...) tuple")


def short(value: Any) -> str:
    """A linked value for the table: a long list by its length."""
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"[{len(value)} names]"
    return repr(value)


def describe(value: Any) -> str:
    """Structure, shapes and dtypes: ``(float32[16, 1, 12, 12], int64[16])``."""
    if isinstance(value, Tensor):
        return f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(describe(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors(v)]
    return []


def ready(data: Any) -> Any:
    """The datamodule as Lightning hands it to fit: prepared (files written, data checked),
    then set up."""
    data.prepare_data()
    data.setup("fit")
    return data


def eval_batch(cli: Any) -> Any:
    """A validation batch (else a training one) after the datamodule's device transforms, as
    ``validation_step`` would see it."""
    data = ready(cli.datamodule)
    loader = data.val_dataloader() if is_overridden("val_dataloader", data) else None
    try:
        batch = next(iter(loader)) if loader is not None else None
    except StopIteration:
        batch = None
    if batch is None:
        batch = next(iter(data.train_dataloader()))
    return data.on_after_batch_transfer(batch, 0)


def weights_equal(a: LightningModule, b: LightningModule) -> list[str]:
    """Names of the parameters and buffers whose values differ (bit for bit)."""
    sa, sb = a.state_dict(), b.state_dict()
    return [k for k in sa if k not in sb or not torch.equal(sa[k], sb[k])]


def seeded_outputs(model: LightningModule, x: Tensor) -> list[Tensor]:
    """``model(x)`` in eval mode with the random state reset first, so two calls of a module
    that draws random numbers still compare what they should."""
    model.eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        return [t.detach().clone() for t in tensors(model(x))]


class Repeat:
    """One batch, ``times`` times: the loader of the learns run. A class, not a list: Lightning
    reads a list as several loaders."""

    def __init__(self, batch: Any, times: int) -> None:
        self.batch, self.times = batch, times

    def __iter__(self) -> Iterator[Any]:
        return (self.batch for _ in range(self.times))

    def __len__(self) -> int:
        return self.times


# -- callbacks the runs use (public hooks only) ----------------------------------------------
class RecordTraining(Callback):
    """Losses per step and, at the first optimizer step, the parameters whose gradient is
    missing, non-finite or zero."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.bad_gradients: dict[str, list[str]] | None = None
        self.lrs: list[float] = []

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor
                           ) -> None:
        self.losses.append(float(loss))  # recorded even when the backward then fails
        if trainer.optimizers:
            self.lrs.append(float(trainer.optimizers[0].param_groups[0]["lr"]))

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: Any) -> None:
        if self.bad_gradients is not None:
            return
        self.bad_gradients = {"no": [], "a non-finite": [], "a zero": []}
        for name, parameter in pl_module.named_parameters():
            if not parameter.requires_grad:
                continue
            if parameter.grad is None:
                self.bad_gradients["no"].append(name)
            elif not torch.isfinite(parameter.grad).all():
                self.bad_gradients["a non-finite"].append(name)
            elif not parameter.grad.any():
                self.bad_gradients["a zero"].append(name)


class SaveAtStep(Callback):
    """``trainer.save_checkpoint`` after optimizer step ``step``, inside the epoch, as a
    pre-empted run's checkpoint would be."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


class RankView(Callback):
    """For the ddp check, on each rank: a hash of every training batch and, at the end, of the
    parameters; written to ``$CHECK_RANK_FOLDER/rank_<r>.json``."""

    def __init__(self) -> None:
        self.batches: list[str] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        digest = hashlib.sha256()
        for t in tensors(batch):
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        self.batches.append(digest.hexdigest())

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        digest = hashlib.sha256()  # parameters: buffers such as BatchNorm's statistics are
        for value in pl_module.parameters():  # updated by each rank's own last batch
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        path = Path(os.environ["CHECK_RANK_FOLDER"]) / f"rank_{trainer.global_rank}.json"
        path.write_text(json.dumps({"batches": self.batches, "weights": digest.hexdigest()}))


# -- the checks --------------------------------------------------------------------------------
class Kit:
    """The checks, sharing what they can: one fixed-batch run serves learns, optimizer and
    gradients; two plain fits serve reproducible, checkpoint and resume."""

    def __init__(self, options: list[str], folder: Path, selected: list[str]) -> None:
        self.raw_options = options
        self.folder = folder
        self.selected = selected
        self.builder: Builder | None = None
        self.cli: Any = None
        self.fixed_run: tuple[RecordTraining, Any, Exception | None] | None = None
        self.fits: dict[str, Any] = {}
        self.batch: Any = None

    # builds ------------------------------------------------------------------------------
    def builds(self) -> str:
        import train

        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                self.builder = Builder(self.raw_options, self.folder)
                self.cli = self.builder.build("builds")
        except SystemExit as error:  # the parser's one line, or train.py's
            lines = [line for line in errors.getvalue().splitlines() if line.strip()]
            raise CheckFailed(lines[-1] if lines else "the config does not parse") from error
        model, data = self.cli.model, self.cli.datamodule
        hparams = getattr(model, "hparams", {}) or {}
        linked = [f"{target}={short(getattr(data, source))}" for source, target in train.LINKS
                  if getattr(data, source, None) is not None and target in hparams]
        given = f" given {', '.join(linked)}" if linked else ""
        return f"{type(model).__name__} on {type(data).__name__}{given}"

    # one batch -----------------------------------------------------------------------------
    def one_batch(self) -> str:
        model, batch = self.cli.model, self.first_batch()
        seen = describe(batch)
        record, run_cli, error = self.fixed_training()
        if not record.losses:
            if isinstance(error, CheckFailed):
                raise CheckFailed(f"batch {seen}; {error}")
            why = f"fails: {one_line(error)}" if error else "returned no loss (a tensor or a " \
                                                            "dict with 'loss')"
            raise CheckFailed(f"batch {seen}; training_step {why}")
        first = record.losses[0]
        if not torch.isfinite(torch.tensor(first)):
            raise CheckFailed(f"batch {seen}; the first loss is {first}")
        output = ""
        if is_overridden("forward", model, LightningModule):
            x = inputs_of(run_cli.datamodule.on_after_batch_transfer(batch, 0))
            output = f"; output {describe(seeded_outputs(run_cli.model, x))}"
        return f"batch {seen}{output}; loss {first:.4g}"

    def first_batch(self) -> Any:
        """The first training batch, from the builds instance's loader (the runs' own
        datamodules start fresh, as in any fit)."""
        if self.batch is None:
            self.batch = next(iter(ready(self.cli.datamodule).train_dataloader()))
        return self.batch

    def fixed_training(self) -> tuple[RecordTraining, Any, Exception | None]:
        """LEARN_STEPS (1 if learns is not asked for) steps on the first training batch, over
        and over: the batch goes through the datamodule's hooks as any batch does. Returns
        what was recorded, the run and the error that stopped it, if any."""
        if self.fixed_run is None:
            steps = LEARN_STEPS if "learns" in self.selected else 1
            record, cli, error = RecordTraining(), None, None
            try:
                cli = self.builder.build("learns", steps=steps, batches=1.0)
                batch = self.first_batch()
                cli.datamodule.train_dataloader = lambda: Repeat(batch, steps)
                cli.trainer.callbacks.append(record)
                with quiet():
                    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
                if cli.trainer.global_step == 0:
                    raise CheckFailed("fit stopped before the first optimizer step (a callback "
                                      "that stops fit, e.g. an LR range test?)")
            except Exception as caught:  # the verdict of one_batch / learns / gradients
                error = caught
            self.fixed_run = (record, cli, error)
        return self.fixed_run

    def training_broken(self) -> bool:
        """The fixed-batch run stopped with an error: the checks that train would repeat it."""
        return self.fixed_run is not None and self.fixed_run[2] is not None

    def training_or_fail(self) -> tuple[RecordTraining, Any]:
        record, cli, error = self.fixed_training()
        if isinstance(error, CheckFailed):
            raise error
        if error is not None:
            if "does not require grad" in str(error):
                raise CheckFailed("the loss does not depend on any parameter (computed from a "
                                  "detached tensor?): " + one_line(error))
            raise CheckFailed(f"training fails: {one_line(error)}")
        return record, cli

    # learns --------------------------------------------------------------------------------
    def learns(self) -> str:
        record, _ = self.training_or_fail()
        losses = record.losses
        if len(losses) < LEARN_STEPS:
            raise CheckFailed(f"only {len(losses)} of {LEARN_STEPS} steps returned a loss")
        first, last = losses[0], sum(losses[-5:]) / 5
        lrs = f"lr {min(record.lrs):.2g}..{max(record.lrs):.2g}" if record.lrs else "no lr"
        summary = (f"loss {first:.4g} -> {last:.4g} in {LEARN_STEPS} steps on one batch "
                   f"({lrs})")
        if not last < LEARN_RATIO * first:
            raise CheckFailed(f"does not learn: {summary}; check the learning rate, that the "
                              "loss uses the model's output, and the target's dtype")
        return summary

    # optimizer -----------------------------------------------------------------------------
    def optimizer(self) -> str:
        named = ((self.cli.config.get("model") or {}).get("init_args") or {}).get("optimizer")
        class_path = getattr(named, "class_path", None) or (
            named.get("class_path") if isinstance(named, dict) else None)
        if not class_path:
            raise CheckSkipped("the config names no optimizer for the model")
        _, run_cli = self.training_or_fail()
        module, _, name = class_path.rpartition(".")
        configured = getattr(importlib.import_module(module), name)
        used = [type(o) for o in run_cli.trainer.optimizers]
        names = [f"{t.__module__}.{t.__qualname__}" for t in used]
        if not any(issubclass(t, configured) for t in used):
            raise CheckFailed(f"the config names {class_path} but configure_optimizers returns "
                              f"{', '.join(names) or 'no optimizer'}: build it from the "
                              "module's optimizer argument")
        return f"{class_path}, as configured"

    # gradients -----------------------------------------------------------------------------
    def gradients(self) -> str:
        record, run_cli = self.training_or_fail()
        if record.bad_gradients is None:
            raise CheckFailed("no optimizer step ran (manual optimization calls no "
                              "optimizer.step?)")
        bad = {kind: names for kind, names in record.bad_gradients.items() if names}
        if bad:
            parts = [f"{len(names)} get {kind} gradient ({', '.join(names[:4])}"
                     f"{', ...' if len(names) > 4 else ''})" for kind, names in bad.items()]
            raise CheckFailed("; ".join(parts) + ": an unused layer, or a detached path?")
        count = sum(1 for p in run_cli.model.parameters() if p.requires_grad)
        return f"all {count} trainable parameter tensors"

    # eval mode -----------------------------------------------------------------------------
    def eval_mode(self) -> str:
        model = self.cli.model
        if not is_overridden("forward", model, LightningModule):
            raise CheckSkipped("the module has no forward")
        x = inputs_of(eval_batch(self.cli))
        model.eval()
        with torch.no_grad():
            first, again = tensors(model(x)), tensors(model(x))
            if len(x) < 2:
                raise CheckSkipped("the batch holds one sample")
            alone = tensors(model(x[:1]))
        if any(not torch.allclose(a, b, atol=TOLERANCE, rtol=1e-4)
               for a, b in zip(first, again, strict=True)):
            raise CheckFailed("two eval-mode calls on the same batch differ: dropout applied "
                              "with training=True, or random numbers drawn in forward?")
        if any(not torch.allclose(a[:1], b, atol=TOLERANCE, rtol=1e-4)
               for a, b in zip(first, alone, strict=True) if a.shape[:1] == (len(x),)):
            raise CheckFailed("a sample's eval output depends on the rest of the batch: "
                              "BatchNorm left in training mode, or statistics over the batch?")
        return f"{len(x)} samples: the same alone, in the batch and called twice"

    # reproducible / checkpoint / resume ------------------------------------------------------
    def fit(self, name: str) -> Any:
        """FIT_STEPS steps on the configured data; ``straight`` also saves the step
        FIT_STEPS // 2 checkpoint and the final one; ``resumed`` starts from the former."""
        if name in self.fits:
            if isinstance(self.fits[name], BaseException):
                if self.training_broken():
                    raise CheckSkipped("training fails (see learns)")
                raise CheckFailed(f"training fails: {one_line(self.fits[name])}")
            return self.fits[name]
        try:
            cli = self.builder.build(name)
            ckpt = None
            if name == "straight":
                cli.trainer.callbacks.append(SaveAtStep(FIT_STEPS // 2, self.folder / "mid.ckpt"))
            if name == "resumed":
                self.fit("straight")  # writes mid.ckpt
                ckpt = self.folder / "mid.ckpt"
            with quiet():
                cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
            if cli.trainer.global_step != FIT_STEPS:
                raise CheckFailed(f"the fit stopped at step {cli.trainer.global_step} of "
                                  f"{FIT_STEPS}")
            if name == "straight":
                cli.trainer.save_checkpoint(self.folder / "final.ckpt")
            self.fits[name] = cli
        except CheckFailed:
            raise
        except Exception as error:
            self.fits[name] = error
            if self.training_broken():
                raise CheckSkipped("training fails (see learns)") from error
            raise CheckFailed(f"training fails: {one_line(error)}") from error
        return cli

    def reproducible(self) -> str:
        a, b = self.fit("straight"), self.fit("again")
        differ = weights_equal(a.model, b.model)
        if differ:
            seed = a.config.get("seed_everything")
            raise CheckFailed(f"two fits with seed {seed} differ in "
                              f"{len(differ)} tensors ({', '.join(differ[:3])}): randomness "
                              "not drawn from torch's seeded generators?")
        return f"{FIT_STEPS} steps twice: bit-identical weights"

    def checkpoint(self) -> str:
        straight = self.fit("straight")
        path = self.folder / "final.ckpt"
        model_class = type(straight.model)
        try:
            with quiet():
                loaded = model_class.load_from_checkpoint(path, map_location="cpu")
        except Exception as error:
            raise CheckFailed(f"{model_class.__name__}.load_from_checkpoint(path) fails: "
                              f"{one_line(error)}; call self.save_hyperparameters() in "
                              "__init__") from error
        differ = weights_equal(straight.model, loaded)
        if differ:
            raise CheckFailed(f"the loaded model differs in {len(differ)} tensors "
                              f"({', '.join(differ[:3])})")
        if is_overridden("forward", loaded, LightningModule):
            x = inputs_of(eval_batch(straight))
            ours, theirs = seeded_outputs(straight.model, x), seeded_outputs(loaded, x)
            if any(not torch.equal(a, b) for a, b in zip(ours, theirs, strict=True)):
                raise CheckFailed("the loaded model's outputs differ from the saved model's")
            return "load_from_checkpoint(path): same weights, same outputs"
        return "load_from_checkpoint(path): same weights (no forward to compare outputs)"

    def resume(self) -> str:
        straight, resumed = self.fit("straight"), self.fit("resumed")
        differ = weights_equal(straight.model, resumed.model)
        if differ:
            raise CheckFailed(f"resumed at step {FIT_STEPS // 2} of {FIT_STEPS}, the weights "
                              f"differ from a straight run in {len(differ)} tensors "
                              f"({', '.join(differ[:3])}): state outside the checkpoint, "
                              "e.g. the random state without callbacks.rng_state.RNGState")
        return f"stopped at step {FIT_STEPS // 2} (inside an epoch), resumed to {FIT_STEPS}: " \
               "bit-identical"

    # ddp -----------------------------------------------------------------------------------
    def ddp(self) -> str:
        if self.training_broken():
            raise CheckSkipped("training fails (see learns)")
        if not torch.distributed.is_available():
            raise CheckSkipped("this torch has no torch.distributed")
        folder = self.folder / "ddp"
        folder.mkdir()
        args = [*self.builder.options, *self.builder.overrides("ddp", DDP_STEPS, DDP_STEPS),
                "--trainer.devices=2", "--trainer.strategy=ddp",
                "--trainer.callbacks+=check.RankView"]
        # The processes import what this one can: the user's module may sit on sys.path only.
        paths = [str(REPO), *(p for p in sys.path if p and Path(p).is_dir())]
        env = {**os.environ, "CHECK_RANK_FOLDER": str(folder), "PYTHONPATH": os.pathsep.join(paths)}
        result = subprocess.run([sys.executable, str(REPO / "train.py"), "fit", *args],
                                env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            raise CheckFailed(f"2 processes exit {result.returncode}: "
                              f"{lines[-1] if lines else 'no output'}")
        ranks = [json.loads((folder / f"rank_{r}.json").read_text()) for r in (0, 1)]
        if ranks[0]["weights"] != ranks[1]["weights"]:
            raise CheckFailed(f"after {DDP_STEPS} steps the two ranks hold different weights")
        shared = sum(a == b for a, b in zip(ranks[0]["batches"], ranks[1]["batches"],
                                            strict=False))
        if shared:
            raise CheckFailed(f"{shared} of {DDP_STEPS} steps gave both ranks the same batch: "
                              "the training loader has no DistributedSampler")
        return f"{DDP_STEPS} steps on 2 processes: identical weights, different batches"

    # predict / export ----------------------------------------------------------------------
    def predict(self) -> str:
        model, data = self.cli.model, self.cli.datamodule
        if not is_overridden("predict_dataloader", data):
            raise CheckSkipped(f"{type(data).__name__} has no predict_dataloader")
        try:
            with quiet():
                outputs = self.cli.trainer.predict(model, datamodule=data)
        except Exception as error:
            if "nothing to predict" in str(error):
                raise CheckSkipped(str(error).split(":", 1)[1].strip()) from error
            raise CheckFailed(f"predict fails: {one_line(error)}") from error
        if not outputs:
            raise CheckFailed("predict returned no outputs")
        return f"{len(outputs)} batches, the first {describe(outputs[0])}"

    def export(self) -> str:
        straight = self.fit("straight")
        if not is_overridden("forward", straight.model, LightningModule):
            raise CheckSkipped("the module has no forward to export")
        from models.checkpoints import package_of

        try:
            from models.export import ExportError
            from models.export import export as export_model
        except ImportError as error:  # the export option deleted from this project
            raise CheckSkipped("models/export.py is not in this project") from error

        x = inputs_of(eval_batch(straight))
        if not x.is_floating_point():
            raise CheckSkipped(f"the model's input is {x.dtype}; export takes float inputs")
        trust = package_of(type(straight.model).__module__ + ".")
        try:
            with quiet():
                _, meta = export_model(self.folder / "final.ckpt", "torchscript",
                                       self.folder / "model.pt", list(x.shape[1:]), trust=trust)
        except ExportError as error:
            raise CheckFailed(str(error)) from error
        except Exception as error:
            raise CheckFailed(f"TorchScript export fails: {one_line(error)}") from error
        return f"TorchScript, max |difference| {meta['parity']['max_abs_diff']:.1e}"


def run_checks(options: list[str], selected: list[str]) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="check-") as tmp:
        kit = Kit(options, Path(tmp), selected)
        for name in ["builds", *[c for c in selected if c != "builds"]]:
            start = time.perf_counter()
            try:
                if name != "builds" and kit.cli is None:
                    raise CheckSkipped("the config does not build")
                with quiet():
                    detail = getattr(kit, name)()
                result = Result(name, "pass", detail)
            except CheckFailed as error:
                result = Result(name, "FAIL", str(error))
            except CheckSkipped as error:
                result = Result(name, "skipped", str(error))
            except Exception as error:  # a check that cannot run is a failure, said in a line
                result = Result(name, "FAIL", one_line(error))
            result.seconds = time.perf_counter() - start
            if name in selected:
                results.append(result)
    return results


def table(results: list[Result]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'check':<{width}}  result   time  detail"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.status:<7} {r.seconds:5.1f}s  {r.detail}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    selected, options, tokens = list(CHECKS), [], iter(argv)
    for token in tokens:
        name, equals, value = token.partition("=")
        if name == "--checks":
            value = value if equals else next(tokens, "")
            selected = [c.strip() for c in value.split(",") if c.strip()]
        else:
            options.append(token)
    unknown = [c for c in selected if c not in CHECKS]
    if unknown or not selected:
        sys.stderr.write(f"train.py check: error: unknown check(s) {unknown}; choose from "
                         f"{', '.join(CHECKS)}\n")
        return 2
    results = run_checks(options, selected)
    print(table(results))
    failed = [r.name for r in results if r.status == "FAIL"]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed or skipped"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0

