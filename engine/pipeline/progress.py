"""What a stage reports after each step, and how callers stop it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Progress:
    """One optimisation step of one stage.

    `image` is set only on steps that emit a still (every `still_every` steps and the last one):
    a detached CPU tensor [3, H, W] in [0, 1], cheap to turn into a PNG.
    """

    stage: str  # "stylegan" | "scare" | "nightmare"
    step: int  # 1-based
    total: int
    loss: float | None = None
    image: torch.Tensor | None = None


#: A stage calls this after every step. Raising `spooky.errors.JobCancelled` from it stops the
#: stage at once (cancel within one step); any other exception propagates as a job failure.
ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """Default callback: ignore progress."""
