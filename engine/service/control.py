"""`JobControl`: what the event loop and the render thread share about the one job a worker runs.

The event loop asks the job to stop (a cancel, the per-job time-out, a drain, a lost lease) and
keeps the lease; the render thread reads both after every step. The first stop reason wins.

The lease as this worker knows it: `lease_fresh()` is true while the last renewal that the
database confirmed is less than `lease_s` old (monotonic time, measured from before that renewal
was sent). Past that, another worker may hold the job (this one was stopped, paused or cut off),
so the render writes nothing outside the database until a renewal confirms the lease again; the
database's own writes are fenced by (job id, attempt) whatever this clock says.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum

from engine.service.store import JobRow
from spooky.errors import JobCancelled


class StopKind(StrEnum):
    CANCEL = "cancel"  # its owner or a moderator asked
    TIMEOUT = "timeout"  # [engine] job_timeout_s ran out
    DRAIN = "drain"  # the engine is shutting down: the job goes back to the queue
    LOST = "lost"  # its lease lapsed (this worker was cut off) and the job may run elsewhere


@dataclass
class JobControl:
    """Shared between the event loop and the render thread for one running job."""

    job: JobRow
    deadline: float  # time.monotonic() after which the job times out
    lease_s: float
    lease_until: float  # time.monotonic() until which the database is known to hold the lease
    stop_kind: StopKind | None = None
    stop_by: str | None = None
    stop_at: float | None = None  # time.time() of the stop request
    stage: str = ""
    step: int = 0
    total: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    _mark: float = field(default_factory=time.monotonic)
    _flag: threading.Event = field(default_factory=threading.Event)

    def stop(self, kind: StopKind, by: str | None = None) -> None:
        """Ask the job to stop; the first reason wins (a cancel during a drain stays a cancel)."""
        if self.stop_kind is None:
            self.stop_kind, self.stop_by, self.stop_at = kind, by, time.time()
        self._flag.set()

    @property
    def stopping(self) -> threading.Event:
        """Set once a stop was asked: a wait in the render thread (the test gate) ends at once."""
        return self._flag

    def check(self) -> None:
        """Raise JobCancelled when the job must stop (called from the render thread)."""
        if not self._flag.is_set() and time.monotonic() > self.deadline:
            self.stop(StopKind.TIMEOUT)
        if self._flag.is_set():
            raise JobCancelled(f"stopped: {self.stop_kind}")

    def renewed(self, sent_at: float) -> None:
        """The database confirmed the lease with a renewal sent at `sent_at` (monotonic)."""
        self.lease_until = max(self.lease_until, sent_at + self.lease_s)

    def lease_fresh(self) -> bool:
        return time.monotonic() < self.lease_until

    def note(self, stage: str, step: int, total: int) -> None:
        """Account the time since the last mark to the stage that just took `step` of `total`."""
        now = time.monotonic()
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + (now - self._mark)
        self._mark = now
        self.stage, self.step, self.total = stage, step, total

    def close_stage(self, name: str) -> None:
        """Account the time since the last step (encoding, saving) to `name`."""
        now = time.monotonic()
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + (now - self._mark)
        self._mark = now
