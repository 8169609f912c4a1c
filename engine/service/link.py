"""The core's line to the worker and the renderer, which exist only once the models are loaded.

`EngineCore` is built with a `WorkerLink` (its `WorkerControl` and its submit check) before the
load starts, because the API serves and accepts jobs while the models load. The service connects
the worker and the renderer's check to the link when they exist; until then a wake has nobody to
wake, no job is in a worker's hands here, and submits are checked with CLIP's tokenizer alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from engine.service.prompt_check import check_prompts
from spooky.contract import JobSpec

#: A submit-time check of a resolved spec; raises the InputError that says what to fix.
SpecCheck = Callable[[JobSpec], None]


class WorkerControl(Protocol):
    """What the core asks of the worker."""

    def wake(self) -> None:
        """A job was queued: claim it now rather than at the next poll."""

    def request_cancel(self, job_id: str, by: str) -> asyncio.Future[None] | None:
        """Stop `job_id` at its next step; the future settles when the job has ended (None: the
        job is claimed but not started, and the cancel is honoured as it starts)."""


class WorkerLink:
    """A `WorkerControl` and a `SpecCheck` that reach the worker and renderer once connected."""

    def __init__(self) -> None:
        self._worker: WorkerControl | None = None
        # Before the models load: the prompt checks need only CLIP's tokenizer, so a prompt CLIP
        # cannot take is refused at submit, not when its turn comes.
        self._check: SpecCheck = check_prompts

    def connect(self, worker: WorkerControl, check: SpecCheck) -> None:
        """The models are loaded: the worker runs and the renderer checks every submit."""
        self._worker, self._check = worker, check

    def check(self, spec: JobSpec) -> None:
        self._check(spec)

    def wake(self) -> None:
        if self._worker is not None:
            self._worker.wake()

    def request_cancel(self, job_id: str, by: str) -> asyncio.Future[None] | None:
        # Without a worker here nobody here holds the job: the core waits for its end as for a
        # job claimed but not started.
        return self._worker.request_cancel(job_id, by) if self._worker is not None else None
