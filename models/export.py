"""Export a checkpoint's model to ONNX or TorchScript, with its preprocessing beside it.

    python -m models.export --ckpt_path logs/digits/version_0/checkpoints/last.ckpt --format onnx
    python -m models.export --ckpt_path ... --format torchscript --output model.pt
    python -m models.export --ckpt_path table.ckpt --input_shape 30   # a table of 30 features

Writes the model file and ``<model file>.json`` (the task, the output's names and shape, the
input shape, read mode, normalisation, the eval transforms, the parity measured), then loads
the exported file back, runs it on random batches and compares its outputs with the PyTorch
model's: the export fails if they differ by more than ``--tolerance``.

Any LightningModule trained by train.py: the class and its arguments come from the checkpoint's
hyperparameters (LightningCLI records the class path there when the module calls
``self.save_hyperparameters()``). What is exported is the module's ``forward``: the normalised
float batch (N, C, H, W) or (N, features) the eval transforms produce in, whatever forward
returns out (one tensor, any shape). The JSON says what that is, from the checkpoint and from
one measured call: logits per class for a classifier, values in the targets' units for a
regressor, per-pixel logits for a segmenter, or only its shape when the task is not known.
ONNX runs in onnxruntime (``pip install -e ".[export]"``), TorchScript in plain torch.
"""

import argparse
import importlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

# load_from_checkpoint goes through jsonargparse; its deprecation notices concern Lightning.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from errors import DataError
from models.checkpoints import read_checkpoint, refuse_untrusted
from models.classifier import ImageClassifier
from models.regressor import Regressor
from models.segmenter import Segmenter

Format = Literal["onnx", "torchscript"]
SUFFIXES: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt"}
DEFAULT_TOLERANCE = 1e-4  # max |output difference|; float32 kernels differ by ~1e-6 in practice
# Tasks whose outputs are classes: their JSON keeps `class_names`, which deployments read.
CLASSES_TASKS = ("multiclass", "multilabel", "segmentation")


class ExportError(RuntimeError):
    """The export cannot be made or does not match the PyTorch model."""


def load_model(ckpt_path: Path, trust: Sequence[str] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """The LightningModule in eval mode, built from the class the checkpoint records, and the
    checkpoint's metadata for the JSON file. A checkpoint naming classes outside the trusted
    packages (and ``trust``) is refused before anything it names is imported."""
    try:
        checkpoint = read_checkpoint(ckpt_path)
        refuse_untrusted(checkpoint, ckpt_path, trusted=trust)
    except DataError as error:
        raise ExportError(str(error)) from None
    hparams = checkpoint.get("hyper_parameters") or {}
    class_path = hparams.get("_class_path")
    if not class_path:
        raise ExportError(f"{ckpt_path} does not record its model class: the module must call "
                          "self.save_hyperparameters() in __init__ (and be trained by train.py)")
    module_name, _, class_name = str(class_path).rpartition(".")
    try:
        # Imported here, by name: Lightning only builds classes that are already imported.
        model_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ExportError(f"{ckpt_path}: cannot import the model class {class_path} ({error}); "
                          "run the export where that class is importable") from error
    if not (isinstance(model_class, type) and issubclass(model_class, LightningModule)):
        raise ExportError(f"{ckpt_path}: {class_path} is not a LightningModule")
    model = model_class.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    model.eval()
    # Lightning saves the datamodule's state under the datamodule's class name; train.py's
    # PreprocessingMetadata callback adds "preprocessing".
    data_hparams = checkpoint.get("datamodule_hyper_parameters") or {}
    data_state = checkpoint.get(str(data_hparams.get("_class_path", "")).rpartition(".")[2])
    data_state = data_state if isinstance(data_state, dict) else {}
    images = data_hparams.get("image_column", "no such option") is not None  # a table: none
    preprocessing = {"read_mode": data_hparams.get("read_mode") if images else None,
                     "input_shape": None,
                     "mean": None, "std": None, "eval_transforms": None,
                     **(checkpoint.get("preprocessing") or {})}
    task = model_task(hparams, data_hparams, data_state, model_class)
    meta = {
        "checkpoint": str(ckpt_path),
        "model_class": class_path,
        "task": task,
        "output_names": output_names(task, hparams, data_hparams, data_state),
        **preprocessing,
    }
    return model, meta


def model_task(hparams: dict[str, Any], data_hparams: dict[str, Any],
               data_state: dict[str, Any], model_class: type) -> str:
    """The task the checkpoint records (the model's ``task``, else the datamodule's), else the
    one the template's module class implies, else ``unknown``."""
    for source in (hparams, data_hparams, data_state):
        if source.get("task"):
            return str(source["task"])
    for parent, task in ((Regressor, "regression"), (Segmenter, "segmentation"),
                         (ImageClassifier, "multiclass")):
        if issubclass(model_class, parent):
            return task
    return "unknown"


def output_names(task: str, hparams: dict[str, Any], data_hparams: dict[str, Any],
                 data_state: dict[str, Any]) -> list[str] | None:
    """What the outputs are called: target columns for regression, else classes or labels."""
    if task == "regression":
        columns = data_hparams.get("label_column")
        candidates = [hparams.get("target_names"),
                      [columns] if isinstance(columns, str) else columns]
    elif task == "none":
        candidates = []
    else:
        candidates = [hparams.get("class_names"), data_state.get("class_names")]
    names = next((c for c in candidates if c), None)
    return [str(n) for n in names] if names else None


def describe_output(task: str, shape: Sequence[int], names: Sequence[str] | None,
                    ) -> tuple[str, str]:
    """The exported output's name and a sentence saying what it holds. A task's meaning is
    claimed only where the measured shape has it (one value per class, per target, or per
    pixel and class); otherwise the sentence gives the shape alone."""
    dims = ", ".join(["N", *map(str, shape)])
    width = shape[0] if len(shape) == 1 else None
    fits = names is None or width == len(names)
    if task == "multiclass" and width and width >= 2 and fits:
        return "logits", (f"logits, shape ({dims}): one per class of output_names; softmax "
                          "gives probabilities")
    if task == "multilabel" and width and fits:
        return "logits", (f"logits, shape ({dims}): one per label of output_names; a sigmoid "
                          "gives each label's probability")
    if task == "regression" and len(shape) <= 1 and (names is None or len(names) == (
            width or 1)):
        return "predictions", (f"predictions in the targets' units, shape ({dims}), in the "
                               "order of output_names")
    if task == "segmentation" and len(shape) == 3 and (names is None or shape[0] == len(names)):
        return "logits", (f"per-pixel logits, shape ({dims}); argmax over dimension 1 gives "
                          "the mask of class indices (output_names)")
    return "outputs", f"the model's forward output, shape ({dims})"


def export_onnx(model: nn.Module, example: Tensor, path: Path, opset: int | None,
                names: tuple[str, str]) -> None:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (example,), str(path), input_names=[names[0]], output_names=[names[1]],
            dynamic_shapes=({0: batch},), opset_version=opset, external_data=False,
            verbose=False,
        )


def export_torchscript(model: LightningModule, example: Tensor, path: Path,
                       meta: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream in favour of torch.export (Lightning 2.6.1
        # deprecated to_torchscript, #21397), but it is still what plain-torch and C++
        # (libtorch) deployments load. torch.jit.trace cannot take a LightningModule itself (it
        # reads every property, and `trainer` raises when none is attached); to_torchscript
        # traces it the way Lightning supports. Tracing works for any forward without
        # data-dependent control flow.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # torch's trace check re-traces and compares graphs, which fails on modules rebuilt
        # from lazy layers; the parity check below compares outputs instead.
        traced = model.to_torchscript(method="trace", example_inputs=example, check_trace=False)
        # The metadata travels inside the file as well: torch.jit.load(..., _extra_files=...).
        torch.jit.save(traced, str(path), _extra_files={"metadata.json": json.dumps(meta)})


def runner(fmt: Format, path: Path, input_name: str = "images") -> Callable[[Tensor], Tensor]:
    """The exported file, loaded the way a deployment would load it."""
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError as error:
            raise ExportError('checking an ONNX export needs onnxruntime: '
                              'pip install -e ".[export]"') from error
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {input_name: x.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    return lambda x: module(x)


def parity(model: nn.Module, run: Callable[[Tensor], Tensor], input_shape: Sequence[int],
           batch_sizes: Sequence[int], seed: int = 0) -> float:
    """Max |output difference| between the Lightning model and the export over random batches
    of these sizes (several sizes also prove the batch axis is dynamic); any output shape or
    dtype (compared as float64)."""
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for size in batch_sizes:
        x = torch.randn(size, *input_shape, generator=generator)
        with torch.inference_mode():
            expected = model(x)
            got = run(x.clone())
        if got.shape != expected.shape:
            raise ExportError(f"export returned shape {tuple(got.shape)} for a batch of {size}; "
                              f"expected {tuple(expected.shape)}")
        if got.numel():
            worst = max(worst, (got.double() - expected.double()).abs().max().item())
    return worst


def measured_output_shape(model: nn.Module, example: Tensor) -> list[int]:
    """The shape of one input's output, from a forward call on the example batch."""
    with torch.inference_mode():
        result = model(example)
    if not isinstance(result, Tensor):
        raise ExportError(f"{type(model).__name__}'s forward returned {type(result).__name__}; "
                          "the export needs one tensor, (batch, ...)")
    if result.ndim == 0 or len(result) != len(example):
        raise ExportError(f"{type(model).__name__}'s forward returned shape "
                          f"{tuple(result.shape)} for a batch of {len(example)}; the export "
                          "needs one entry per input, (batch, ...)")
    return list(result.shape[1:])


def export(
    ckpt_path: str | Path,
    fmt: Format = "onnx",
    output: str | Path | None = None,
    input_shape: Sequence[int] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int | None = None,
    trust: Sequence[str] = (),
) -> tuple[Path, dict[str, Any]]:
    """Export, write the metadata and check parity; returns the model file and the metadata
    (also written to ``<model file>.json``). ``trust``: packages besides the template's and its
    libraries whose classes the checkpoint may name (your own module's)."""
    ckpt_path = Path(ckpt_path)
    model, meta = load_model(ckpt_path, trust)
    shape = list(input_shape or meta.get("input_shape") or [])
    if not shape:
        raise ExportError(f"{ckpt_path} does not record the input shape (train.py runs on "
                          "the template's datamodules record it); pass --input_shape C H W, "
                          "or --input_shape F for a table of F features")
    output = Path(output) if output else ckpt_path.with_suffix(SUFFIXES[fmt])
    output.parent.mkdir(parents=True, exist_ok=True)
    # Batch 2, not 1: tracing and torch.export would otherwise fix a batch size of 1.
    example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    output_shape = measured_output_shape(model, example)
    output_name, description = describe_output(meta["task"], output_shape, meta["output_names"])
    fits_task = output_name != "outputs"
    if not fits_task and meta["task"] not in ("none", "unknown"):
        description += (f" (the checkpoint's task is {meta['task']}, but this is not that "
                        "task's output)")
    input_name = "features" if len(shape) == 1 else "images"
    meta = {"format": fmt, "model_file": output.name, "input_name": input_name,
            "output_name": output_name, **meta, "input_shape": shape, "dynamic_batch": True,
            "output_shape": output_shape, "output": description,
            "torch_version": torch.__version__}
    if meta["task"] in CLASSES_TASKS and fits_task:  # what deployments of a classifier read
        meta["class_names"] = list(meta["output_names"] or [])
    if fmt == "onnx":
        export_onnx(model, example, output, opset, (input_name, output_name))
    elif fmt == "torchscript":
        export_torchscript(model, example, output, meta)
    else:
        raise ExportError(f"unknown format {fmt!r}; use onnx or torchscript")
    batch_sizes = [1, 4, 7]
    max_diff = parity(model, runner(fmt, output, input_name), shape, batch_sizes)
    meta["parity"] = {"max_abs_diff": max_diff, "tolerance": tolerance,
                      "batch_sizes": batch_sizes, "input": "torch.randn, seed 0"}
    meta_path = output.with_name(output.name + ".json")
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    if not max_diff <= tolerance:  # also catches NaN
        raise ExportError(f"{output}: exported outputs differ from PyTorch's by {max_diff:.3g}, "
                          f"more than the tolerance {tolerance:g}")
    return output, meta


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by train.py")
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    parser.add_argument("--output", default=None,
                        help="model file (default: the checkpoint's path with .onnx / .pt)")
    parser.add_argument("--input_shape", type=int, nargs="+", default=None, metavar="N",
                        help="C H W as the model sees it (F for a table of F features), if the "
                             "checkpoint does not record it")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="max |output difference| allowed between export and PyTorch")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's)")
    parser.add_argument("--trust", action="append", default=[], metavar="PACKAGE",
                        help="a package whose classes the checkpoint may name besides torch, "
                             "lightning, ... and the template's (your own module's; repeatable)")
    args = parser.parse_args(argv)
    try:
        output, meta = export(args.ckpt_path, args.format, args.output, args.input_shape,
                              args.tolerance, args.opset, args.trust)
    except ExportError as error:
        sys.stderr.write(f"export: error: {error}\n")
        return 1
    check = meta["parity"]
    shape = "x".join(["N", *map(str, meta["output_shape"])])
    print(f"Exported {meta['format']}: {output} (metadata: {output.name}.json), input "
          f"Nx{'x'.join(map(str, meta['input_shape']))}, output {shape} "
          f"(task {meta['task']}{_names_note(meta['output_names'])})")
    print(f"Parity: max |output difference| {check['max_abs_diff']:.2e} over batches of "
          f"{check['batch_sizes']} (tolerance {check['tolerance']:g})")
    return 0


def _names_note(names: Sequence[str] | None) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f": {shown}"


if __name__ == "__main__":
    sys.exit(main())
