"""Training images/s of torchvision's ResNet-18 on 32x32 synthetic images on a CUDA device: eager
fp32 against bf16 autocast, + channels_last, + ``torch.compile`` (with and without
channels_last), at several batch sizes.

    python benchmarks/gpu.py [--batch-sizes 256 1024] [--steps 50] [--rounds 5] [--warmup 15]

Without a CUDA device it prints one line saying so and exits 0. Synthetic data on the device (no
loader in the way), SGD with momentum. Every variant is built and warmed up first (compilation
included), then ``rounds`` rounds each time ``steps`` steps of every variant in turn,
synchronised before and after: the table gives the median round, so a slow moment of the
machine hits all variants alike. A variant that raises is reported as failed in the table and
the others are still measured (torch 2.11's compiled backward of channels_last convolutions
sometimes fails a stride check, pytorch/pytorch#171622). 32x32 images leave ResNet-18 little
work per image, so small batches measure how fast the host can launch kernels more than the
GPU's arithmetic; the larger batch keeps the GPU busier.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

VARIANTS = {  # name: (bf16 autocast, channels_last, torch.compile)
    "eager fp32": (False, False, False),
    "bf16 autocast": (True, False, False),
    "bf16 + channels_last": (True, True, False),
    "bf16 + compile": (True, False, True),
    "bf16 + channels_last + compile": (True, True, True),
}


def training_step(bf16: bool, channels_last: bool, compile_model: bool,
                  batch_size: int) -> Callable[[], None]:
    """One variant's model, optimizer and batch, closed over by a function doing one step."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model: nn.Module = resnet18(num_classes=10).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step_model = torch.compile(model) if compile_model else model
    images = torch.randn(batch_size, 3, 32, 32, device=device).to(memory_format=memory_format)
    targets = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(step_model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(step: Callable[[], None], steps: int) -> float:
    """Seconds for ``steps`` steps, the GPU idle before and finished after."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def images_per_second(batch_size: int, steps: int, rounds: int,
                      warmup: int) -> dict[str, float | str]:
    """Median images/s over ``rounds`` of each variant at one batch size, or the error that
    stopped a variant (a compiler bug in one variant should not hide the others' numbers)."""
    step_of: dict[str, Callable[[], None]] = {}
    failed: dict[str, str] = {}
    for name, flags in VARIANTS.items():
        try:
            step = training_step(*flags, batch_size)
            timed(step, warmup)
            step_of[name] = step
        except Exception as error:  # report it in the table, keep measuring the rest
            failed[name] = failure(error)
    seconds: dict[str, list[float]] = {name: [] for name in step_of}
    for _ in range(rounds):
        for name, step in list(step_of.items()):
            try:
                seconds[name].append(timed(step, steps))
            except Exception as error:
                failed[name] = failure(error)
                del step_of[name], seconds[name]
    rates = {name: steps * batch_size / statistics.median(s) for name, s in seconds.items()}
    return {name: rates.get(name, failed.get(name, "")) for name in VARIANTS}


def failure(error: Exception) -> str:
    """One table cell: the error's type and the start of its first line."""
    first_line = (str(error).splitlines() or [""])[0].replace("|", "/")
    return f"failed: {type(error).__name__}: {first_line[:80]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--steps", type=int, default=50, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=15)
    args = parser.parse_args()
    if min(args.steps, args.rounds) < 1:
        parser.error("--steps and --rounds must be at least 1")
    if not torch.cuda.is_available():
        print("GPU benchmark skipped: no CUDA device (torch.cuda.is_available() is False).")
        return
    if not torch.cuda.is_bf16_supported():
        print(f"GPU benchmark skipped: {torch.cuda.get_device_name()} has no bf16 support.")
        return
    torch.backends.cudnn.benchmark = True
    rates = {size: images_per_second(size, args.steps, args.rounds, args.warmup)
             for size in args.batch_sizes}
    print(f"{torch.cuda.get_device_name()}, ResNet-18 (torchvision, 10 classes), 3x32x32 "
          f"synthetic images, SGD, median of {args.rounds} rounds of {args.steps} training steps "
          f"after {args.warmup} warm-up steps, torch {torch.__version__}\n")
    print("| variant | " + " | ".join(f"batch {size}: images/s | vs eager fp32"
                                       for size in args.batch_sizes) + " |")
    print("| --- |" + " ---: | ---: |" * len(args.batch_sizes))
    for name in VARIANTS:
        print(f"| {name} | " + " | ".join(cell(rates[size], name) for size in args.batch_sizes)
              + " |")


def cell(rates: dict[str, float | str], name: str) -> str:
    """Two table cells: images/s and the ratio to eager fp32, or the failure and nothing."""
    rate, base = rates[name], rates["eager fp32"]
    if isinstance(rate, str):
        return f"{rate} | "
    return f"{rate:,.0f} | " + (f"{rate / base:.2f}x" if isinstance(base, float) else "")


if __name__ == "__main__":
    main()
