"""`Listener`: PostgreSQL's LISTEN on its own connection, so one node hears another's commits.

The store NOTIFYs at commit: `spooky_events` (payload: the new event id) when events are written,
`spooky_jobs` when a job becomes claimable, `spooky_cancel` (payload: the job id) when a cancel
is asked of a running job. The listener only wakes readers: they then read the store, which stays
the only source of truth, so a notification lost while the connection was down costs latency,
not correctness (after a reconnect every handler is called once, as if each channel had fired).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import psycopg

from engine.service.store.availability import Availability

log = logging.getLogger(__name__)

CHANNELS = ("spooky_events", "spooky_jobs", "spooky_cancel")
#: How long one wait for a notification lasts: how soon a stop is noticed.
POLL_S = 1.0
#: Pause between attempts to reconnect to a server that is down.
RECONNECT_S = 1.0


class Listener:
    """A daemon thread that LISTENs on `CHANNELS` and calls `handlers[channel](payload)`.

    Handlers run on the listener thread: they must be quick and thread-safe (schedule work on the
    event loop with `call_soon_threadsafe`).
    """

    def __init__(
        self, url: str, handlers: Mapping[str, Callable[[str], None]], availability: Availability
    ) -> None:
        self.url = url
        self.handlers = dict(handlers)
        #: The store's: a lost connection is reported once per outage, whichever noticed it.
        self.availability = availability
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spooky-listen", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=POLL_S + 2)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as con:
                    for channel in CHANNELS:
                        con.execute(f"LISTEN {channel}")
                    self.connected.set()
                    self.availability.answered()
                    if not first:
                        # What was committed while we were away: every waiter reads the store again.
                        row = con.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
                        self._call("spooky_events", str(row[0] if row else 0))
                        self._call("spooky_jobs", "")
                        self._call("spooky_cancel", "")
                    first = False
                    while not self._stop.is_set():
                        for note in con.notifies(timeout=POLL_S, stop_after=64):
                            self._call(note.channel, note.payload)
            except psycopg.OperationalError as e:
                self.connected.clear()
                if self._stop.is_set():
                    return
                self.availability.failed(e)
                log.debug("LISTEN connection lost (%s); reconnecting in %g s", e, RECONNECT_S)
                self._stop.wait(RECONNECT_S)

    def _call(self, channel: str, payload: str) -> None:
        handler = self.handlers.get(channel)
        if handler is None:
            return
        try:
            handler(payload)
        except Exception:
            # A broken handler must not end the listening for the others.
            log.exception("handling a %s notification failed", channel)
