"""What a stage reports after each step, and how callers stop it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepReport:
    """One optimisation step of one stage, as the stage hands it to its callback.

    Not a job's progress in the API (`spooky.contract.Progress`): the service turns these into that.

    `image` is set only on steps that emit a still (every `still_every` steps and the last one):
    a detached CPU tensor [3, H, W] in [0, 1], cheap to turn into a PNG.
    """

    stage: str  # "stylegan" | "scare" | "nightmare"
    step: int  # 1-based
    total: int
    # This step's loss, on the steps that read it back (those with a still, and the last one):
    # a read makes the host wait for the device, so the other steps report None.
    loss: float | None = None
    image: torch.Tensor | None = None


#: A stage calls this after every step. Raising `spooky.errors.JobCancelled` from it stops the
#: stage at once (cancel within one step); any other exception propagates as a job failure.
ProgressCallback = Callable[[StepReport], None]


def no_progress(_: StepReport) -> None:
    """Default callback: ignore progress."""


class LossLog:
    """Per-step losses kept on the device and read back in batches: one host wait per read."""

    def __init__(self) -> None:
        self._pending: list[torch.Tensor] = []
        self._values: list[float] = []

    def add(self, loss: torch.Tensor) -> None:
        self._pending.append(loss.detach())

    def values(self) -> list[float]:
        """Every loss so far, oldest first (reads the pending ones back)."""
        if self._pending:
            self._values.extend(torch.stack(self._pending).float().tolist())
            self._pending.clear()
        return list(self._values)

    def latest(self) -> float:
        return self.values()[-1]
