"""Waiting out what is down for a while: a doubling back-off, and engine calls retried with it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from spooky.engine_client import EngineUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class Backoff:
    """1, 2, 4 … `cap` seconds."""

    def __init__(self, first: float = 1.0, cap: float = 30.0) -> None:
        self.first, self.cap, self._next = first, cap, first

    def next(self) -> float:
        delay, self._next = self._next, min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


async def engine_call(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """`call()` until the engine answers: an unavailable engine is waited out, any other error raised."""
    backoff = Backoff()
    while True:
        try:
            return await call()
        except EngineUnavailable as e:
            delay = backoff.next()
            log.warning("engine unavailable during %s (%s); retrying in %.0f s", what, e, delay)
            await asyncio.sleep(delay)
