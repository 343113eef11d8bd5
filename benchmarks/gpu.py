"""Training images/s of torchvision's ResNet-18 on 32x32 synthetic images on a CUDA device: eager
fp32 against bf16 autocast + channels_last + ``torch.compile``, and each change on its own.

    python benchmarks/gpu.py [--batch-size 256] [--steps 50] [--warmup 15]

Without a CUDA device it prints one line saying so and exits 0. Synthetic data on the device
(no loader in the way), SGD with momentum, ``warmup`` steps (compilation included) before
``steps`` timed ones, synchronised before and after.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

VARIANTS = {  # name: (bf16 autocast, channels_last, torch.compile)
    "eager fp32": (False, False, False),
    "bf16 autocast": (True, False, False),
    "bf16 + channels_last": (True, True, False),
    "bf16 + channels_last + compile": (True, True, True),
}


def images_per_second(bf16: bool, channels_last: bool, compile_model: bool, batch_size: int,
                      steps: int, warmup: int) -> float:
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

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=15)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("GPU benchmark skipped: no CUDA device (torch.cuda.is_available() is False).")
        return
    if not torch.cuda.is_bf16_supported():
        print(f"GPU benchmark skipped: {torch.cuda.get_device_name()} has no bf16 support.")
        return
    torch.backends.cudnn.benchmark = True
    rates = {name: images_per_second(*flags, args.batch_size, args.steps, args.warmup)
             for name, flags in VARIANTS.items()}
    base = rates["eager fp32"]
    print(f"{torch.cuda.get_device_name()}, ResNet-18 (torchvision, 10 classes), 3x32x32 "
          f"synthetic images, batch {args.batch_size}, {args.steps} timed training steps after "
          f"{args.warmup} warm-up steps, torch {torch.__version__}\n")
    print("| variant | images/s | vs eager fp32 |")
    print("| --- | ---: | ---: |")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
