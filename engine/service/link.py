"""The core's line to the worker, which exists only once the models are loaded.

`EngineCore` is built with a `WorkerLink` before the load starts, because the API serves and
accepts jobs while the models load. The service connects the worker to the link when it exists;
until then a wake has nobody to wake, and no job is in a worker's hands here.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class WorkerControl(Protocol):
    """What the core asks of the worker."""

    def wake(self) -> None:
        """A job was queued: claim it now rather than at the next poll."""

    def request_cancel(self, job_id: str, by: str) -> asyncio.Future[None] | None:
        """Stop `job_id` at its next step; the future settles when the job has ended (None: the
        job is claimed but not started, and the cancel is honoured as it starts)."""


class WorkerLink:
    """A `WorkerControl` that reaches the worker once connected."""

    def __init__(self) -> None:
        self._worker: WorkerControl | None = None

    def connect(self, worker: WorkerControl) -> None:
        """The models are loaded: the worker runs."""
        self._worker = worker

    def wake(self) -> None:
        if self._worker is not None:
            self._worker.wake()

    def request_cancel(self, job_id: str, by: str) -> asyncio.Future[None] | None:
        # Without a worker here nobody here holds the job: the core waits for its end as for a
        # job claimed but not started.
        return self._worker.request_cancel(job_id, by) if self._worker is not None else None
