"""Images of several sizes or channel counts, for ``validation.check_samples_stack``: which to
probe when there are many, and the error naming two that would not stack into a batch."""

from collections.abc import Sequence
from pathlib import Path

from datamodules.validation import Header
from errors import DataError


def extremes(probes: list[tuple[Header, int]]) -> list[tuple[Header, int]]:
    """Of ``(header, index)`` probes, the smallest and largest in width and height per mode."""
    chosen = set()
    for mode in {h[2] for h, _ in probes}:
        same = [p for p in probes if p[0][2] == mode]
        for side in (0, 1):
            chosen.add(min(same, key=lambda p: p[0][side]))
            chosen.add(max(same, key=lambda p: p[0][side]))
    return sorted(chosen, key=lambda p: p[1])


def refuse_unstackable(seen: dict[tuple, tuple[Header, int]], paths: Sequence[Path], source: str,
                       transforms: str) -> None:
    """Raise for the first two sample shapes of ``seen`` (shapes -> header, index)."""
    (shape_a, (header_a, a)), (shape_b, (header_b, b)) = list(seen.items())[:2]
    if shape_a[0][1:] == shape_b[0][1:]:
        fix = "set read_mode: RGB or GRAY (UNCHANGED keeps each file's own channels)"
    else:
        fix = f"give {transforms} a v2.Resize((H, W)) or a crop so every image has one size"
    raise DataError(
        f"{source}: images would not stack into a batch: {paths[a]} ({header_a[0]}x"
        f"{header_a[1]} {header_a[2]}) becomes {list(shape_a[0])} but {paths[b]} "
        f"({header_b[0]}x{header_b[1]} {header_b[2]}) becomes {list(shape_b[0])}; {fix}")
