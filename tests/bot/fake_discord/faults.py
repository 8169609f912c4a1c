"""Faults a test injects into the fake Discord: answers it fails or drops, answers it holds back.

An injected fault answers matching requests with a status and code (or closes the connection
without answering) a number of times; a hold lets the fake act on a request but keeps its answer
back until the test releases it, to kill a bot at that moment.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from fake_discord.state import Recorded


@dataclass
class Fault:
    """Answer matching requests with `status` (or drop the connection) `times` times."""

    method: str | None
    path_re: re.Pattern[str]
    status: int = 503
    times: int = 1
    drop: bool = False
    code: int = 0
    filename: str | None = None  # only requests uploading a file of this name

    def matches(self, rec: Recorded) -> bool:
        return (
            self.times > 0
            and self.method in (None, rec.method)
            and bool(self.path_re.search(rec.path))
            and (self.filename is None or any(name == self.filename for name, _ in rec.files))
        )


@dataclass
class Hold:
    """A matching request is acted on, then its answer waits for `released` (see Faults.hold)."""

    method: str | None
    path_re: re.Pattern[str]
    filename: str | None = None  # only requests uploading a file of this name
    record: Recorded | None = None
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, rec: Recorded) -> bool:
        return (
            self.record is None
            and 200 <= rec.status < 300
            and self.method in (None, rec.method)
            and bool(self.path_re.search(rec.path))
            and (self.filename is None or any(name == self.filename for name, _ in rec.files))
        )

    def release(self) -> None:
        self.released.set()


class Dropped(Exception):
    """The fake closed the connection without answering."""


class Faults:
    """The faults and holds in force; the REST side asks before and after answering."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.holds: list[Hold] = []

    def inject(
        self,
        path_re: str,
        *,
        method: str | None = None,
        status: int = 503,
        times: int = 1,
        drop: bool = False,
        code: int = 0,
        filename: str | None = None,
    ) -> Fault:
        """Fail the next `times` matching requests with `status` (or a dropped connection)."""
        fault = Fault(method, re.compile(path_re), status, times, drop, code, filename)
        self.faults.append(fault)
        return fault

    def hold(self, path_re: str, *, method: str | None = None, filename: str | None = None) -> Hold:
        """Act on the next matching request that succeeds, but keep its answer back until
        `release()` (the fake's stop releases every hold)."""
        held = Hold(method, re.compile(path_re), filename)
        self.holds.append(held)
        return held

    def take(self, rec: Recorded) -> Fault | None:
        """The fault that answers this request instead of Discord, counted as used."""
        for fault in self.faults:
            if fault.matches(rec):
                fault.times -= 1
                return fault
        return None

    async def wait_if_held(self, rec: Recorded) -> None:
        """After the fake acted on `rec`: wait for the test if a hold matches it."""
        if held := next((h for h in self.holds if h.matches(rec)), None):
            held.record = rec
            held.reached.set()
            await held.released.wait()

    def release_all(self) -> None:
        for held in self.holds:
            held.release()
