"""StyleCLIP's learning-rate schedule: linear warm-up, flat top, cosine ramp-down."""

from __future__ import annotations

import math


def styleclip_lr(
    step: int, total: int, base_lr: float, *, warmup: float = 0.05, rampdown: float = 0.25
) -> float:
    """Learning rate of step `step` (0-based) of `total`.

    StyleCLIP evaluates its ramp at t = step/total, so step 0 gets lr 0 and is wasted. We
    evaluate it at the middle of each step's interval, t = (step + ½)/total: the first step
    moves, the last step still moves a little (t = 1 would give 0 again), and the curve is
    otherwise StyleCLIP's.
    """
    if total < 1:
        raise ValueError(f"total must be >= 1, got {total}")
    if not 0 <= step < total:
        raise ValueError(f"step must be in [0, {total}), got {step}")
    t = (step + 0.5) / total
    ramp_down = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp_down = 0.5 - 0.5 * math.cos(ramp_down * math.pi)
    ramp_up = min(1.0, t / warmup) if warmup > 0 else 1.0
    return base_lr * ramp_down * ramp_up
