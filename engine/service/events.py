"""Live fan-out of persisted events.

Every event is first committed to the store (which assigns its id), then the hub is told the newest
id. Readers never receive events from the hub itself: they wake up and read the store after the
last id they sent. So a reader cannot miss an event or see one twice, a reconnect with
`Last-Event-ID` is the same code path as a live stream, and the store is the only source of truth.
SQLite serialises writers, so ids commit in increasing order and "after N" is a stable cursor.
"""

from __future__ import annotations

import asyncio
import contextlib


class EventHub:
    """Tells waiting readers that events newer than the ones they have are in the store."""

    def __init__(self, latest: int = 0) -> None:
        self.latest = latest
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop readers wait on; `notify` may then be called from any thread."""
        self._loop = loop

    def notify(self, newest_id: int) -> None:
        """An event with id `newest_id` is committed (thread-safe)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._advance(newest_id)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                loop.call_soon_threadsafe(self._advance, newest_id)

    def _advance(self, newest_id: int) -> None:
        if newest_id > self.latest:
            self.latest = newest_id
        # Wake everyone waiting on the current flag, and give later waiters a fresh one.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_beyond(self, seen: int, timeout: float) -> bool:
        """Wait until an event newer than `seen` is committed; False on timeout."""
        if self.latest > seen:
            return True
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            return self.latest > seen
        return True
