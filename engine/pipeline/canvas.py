"""The stage-2/3 canvas rules (no torch import): what sizes a VQGAN can encode and decode.

A canvas (w, h) has both sides positive multiples of the VQGAN's downsampling factor and at most
`MAX_CANVAS_SIDE`. The submit-time check (engine.service.admission) and the stages use the same
functions, on nodes with and without the models.
"""

from __future__ import annotations

from spooky.bounds import MAX_CANVAS_SIDE
from spooky.errors import InvalidSizeError


def is_canvas(size: tuple[int, int], factor: int) -> bool:
    """Whether (w, h) is a canvas for `factor`."""
    width, height = size
    sides_fit = 0 < width <= MAX_CANVAS_SIDE and 0 < height <= MAX_CANVAS_SIDE
    return sides_fit and width % factor == 0 and height % factor == 0


def check_canvas(size: tuple[int, int], factor: int) -> None:
    """InvalidSizeError unless (w, h) is a canvas for `factor`; the message names the nearest ones."""
    if is_canvas(size, factor):
        return
    width, height = size
    if max(width, height) > MAX_CANVAS_SIDE:
        raise InvalidSizeError(
            f"canvas size {width}x{height} is too large: each side may be at most {MAX_CANVAS_SIDE}"
        )
    near = ", ".join(f"{w}x{h}" for w, h in nearest_valid_sizes(size, factor))
    raise InvalidSizeError(
        f"canvas size {width}x{height} (w x h) is not allowed: both sides must be positive multiples "
        f"of {factor}, the VQGAN's downsampling factor",
        hint=f"the nearest valid sizes are {near}",
    )


def nearest_valid_sizes(size: tuple[int, int], factor: int) -> list[tuple[int, int]]:
    """Sizes with both sides positive multiples of `factor` around (w, h), nearest first."""

    def around(side: int) -> list[int]:
        below = max(factor, side // factor * factor)
        above = max(factor, -(-side // factor) * factor)
        return sorted({below, above})

    width, height = size
    options = [(w, h) for w in around(width) for h in around(height)]
    return sorted(options, key=lambda s: (abs(s[0] - width) + abs(s[1] - height), s))


def snap_size(size: tuple[int, int], factor: int) -> tuple[int, int]:
    """The valid size nearest to (w, h)."""
    return nearest_valid_sizes(size, factor)[0]
