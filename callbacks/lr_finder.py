"""Learning-rate range test on any config: prints the suggested LR and saves the curve as PNG.

    python train.py fit --config configs/lr_find.yaml [--config your.yaml]

Wraps Lightning's ``LearningRateFinder``: at the start of fit it trains ``num_training_steps``
steps with the LR growing from ``min_lr`` to ``max_lr``, records the loss, restores the initial
weights and suggests the LR where the loss falls fastest. Lightning's own plot needs matplotlib;
this draws the curve with Pillow (already a dependency) instead.
"""

import contextlib
import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.tuner import lr_finder as lightning_lr_finder
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw

from callbacks.progress import interactive_terminal


class LRRangeTest(LearningRateFinder):
    """Run the LR range test at fit start, print the suggestion, save ``lr_find.png``.

    Args:
        min_lr, max_lr, num_training_steps, mode, early_stop_threshold: as in Lightning's
            ``LearningRateFinder``; ``num_training_steps`` must fit in ``max_epochs`` epochs.
        plot_path: where the PNG goes; default ``<log dir>/lr_find.png``.
        stop_after: end fit once the test is done (the usual use: read the suggestion, put it
            in the config). ``False`` trains on afterwards with the config's LR unchanged: the
            LR lives in the optimizer callable and the schedule, which the finder cannot edit.
    """

    def __init__(
        self,
        min_lr: float = 1e-6,
        max_lr: float = 1.0,
        num_training_steps: int = 100,
        mode: Literal["exponential", "linear"] = "exponential",
        early_stop_threshold: float | None = 4.0,
        plot_path: str | None = None,
        stop_after: bool = True,
    ) -> None:
        super().__init__(min_lr, max_lr, num_training_steps, mode, early_stop_threshold,
                         update_attr=False)
        self.plot_path = plot_path
        self._early_exit = stop_after  # LearningRateFinder ends fit cleanly when this is set
        self.suggested_lr: float | None = None

    def lr_find(self, trainer: Trainer, pl_module: LightningModule) -> None:
        try:
            with _quiet_tqdm_unless_interactive():
                super().lr_find(trainer, pl_module)
        finally:
            # Report even when stop_after raises Lightning's exit exception.
            self._report(trainer)

    @rank_zero_only
    def _report(self, trainer: Trainer) -> None:
        if self.optimal_lr is None:  # skipped, e.g. under fast_dev_run
            print("LR finder: skipped (fast_dev_run)")
            return
        self.suggested_lr = self.optimal_lr.suggestion()
        path = Path(self.plot_path or Path(trainer.log_dir or trainer.default_root_dir)
                    / "lr_find.png")
        results = self.optimal_lr.results
        save_lr_plot(results["lr"], results["loss"], self.suggested_lr, path)
        if self.suggested_lr is None:
            print(f"LR finder: too few points for a suggestion; curve saved to {path}")
        else:
            print(f"LR finder: suggested learning rate {self.suggested_lr:.3g} "
                  f"(curve saved to {path})")


@contextlib.contextmanager
def _quiet_tqdm_unless_interactive() -> Iterator[None]:
    """Lightning's finder always draws a tqdm bar (``\\r``-redrawn, on stderr); in a log file
    or CI page that is one long garbled line, so it is drawn only on a terminal, like the
    template's own progress output."""
    original = lightning_lr_finder.tqdm
    if not interactive_terminal():
        lightning_lr_finder.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        lightning_lr_finder.tqdm = original


def save_lr_plot(
    lrs: list[float], losses: list[float], suggestion: float | None, path: Path,
    size: tuple[int, int] = (640, 420),
) -> None:
    """Loss against LR (log scale) as a PNG, the suggested LR marked in red."""
    points = [(math.log10(lr), loss) for lr, loss in zip(lrs, losses, strict=True)
              if lr > 0 and math.isfinite(loss)]
    width, height = size
    left, right, top, bottom = 70, 20, 20, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    if len(points) >= 2:
        xs, ys = zip(*points, strict=True)
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

        def to_pixel(x: float, y: float) -> tuple[float, float]:
            return (left + (x - x0) / (x1 - x0) * (width - left - right),
                    height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

        draw.line([to_pixel(x, y) for x, y in points], fill="royalblue", width=2)
        for decade in range(math.ceil(x0), math.floor(x1) + 1):
            px, _ = to_pixel(decade, y0)
            draw.line([(px, height - bottom), (px, height - bottom + 5)], fill="black")
            draw.text((px - 12, height - bottom + 8), f"1e{decade}", fill="black")
        for y in (y0, y1):
            _, py = to_pixel(x0, y)
            draw.text((5, py - 6), f"{y:.3g}", fill="black")
        if suggestion is not None and suggestion > 0:
            loss_at = dict(zip(lrs, losses, strict=True)).get(suggestion)
            if loss_at is not None and math.isfinite(loss_at):
                px, py = to_pixel(math.log10(suggestion), loss_at)
                draw.ellipse([px - 5, py - 5, px + 5, py + 5], outline="red", width=2)
    draw.text((width // 2 - 60, height - 20), "learning rate (log)", fill="black")
    draw.text((5, 2), "loss", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
