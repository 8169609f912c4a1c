"""`Availability`: whether the shared database answers, as every connection of this node finds it.

A PostgreSQL restart reaches each of a node's connections separately (the store's, the
listener's) and each of its callers (the claim loop, the lease renewal, the render thread, API
requests) a second or more apart. Each of them reports here instead of logging: the node logs one
warning when the database stops answering and one line when it answers again, whoever noticed,
and `/metrics` shows the counts. Connections opened before the latest failure are stale (a restart
closed them on the server's side even if psycopg has not noticed yet): `epoch` tells them apart.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AvailabilityCounts:
    """A consistent reading of the counters, for metrics and health."""

    up: bool
    down_since: float | None  # time.time() of the first failure of the current outage
    outages: int  # outages seen since this node started
    failed_calls: int  # store calls and listener connections that found the database unavailable
    down_seconds: float  # total length of the outages that ended


class Availability:
    """Thread-safe: the store thread, the render thread and the listener thread all report."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._down_mono = 0.0
        self._outages = 0
        self._failed = 0
        self._down_seconds = 0.0
        self._failed_in_outage = 0
        #: Incremented by every failure: a connection opened at an older epoch may be stale.
        self.epoch = 0

    @property
    def up(self) -> bool:
        return self._down_since is None

    @property
    def detail(self) -> str | None:
        since = self._down_since
        if since is None:
            return None
        return f"{self.where} has not answered for {time.time() - since:.0f} s"

    def failed(self, error: BaseException) -> None:
        """A call or connection found the database unavailable."""
        with self._lock:
            self.epoch += 1
            self._failed += 1
            if self._down_since is not None:
                self._failed_in_outage += 1
                return
            self._down_since, self._down_mono = time.time(), time.monotonic()
            self._outages += 1
            self._failed_in_outage = 1
        log.warning(
            "%s is unavailable (%s); running jobs keep rendering and every call is retried until it "
            "answers again",
            self.where,
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
        )

    def answered(self) -> None:
        """A call or connection got an answer."""
        if self._down_since is None:  # the common case: no lock
            return
        with self._lock:
            if self._down_since is None:
                return
            seconds = time.monotonic() - self._down_mono
            failed = self._failed_in_outage
            self._down_seconds += seconds
            self._down_since = None
        log.info("%s answers again after %.1f s (%d calls found it unavailable)", self.where, seconds, failed)

    def counts(self) -> AvailabilityCounts:
        with self._lock:
            return AvailabilityCounts(
                up=self._down_since is None,
                down_since=self._down_since,
                outages=self._outages,
                failed_calls=self._failed,
                down_seconds=self._down_seconds,
            )
