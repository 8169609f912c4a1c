"""Follow the engine's events for this process's servers, and hand each job's to its feed.

One background task reads `engine.events(after=cursor)` for all guilds and persists the last event
id (atomic write) so a restarted bot resumes where it stopped; at start, and now and then after,
it also asks the engine for finished jobs that were never delivered. Each followed job has a feed
(`bot.feed.JobFeed`) that shows it and delivers its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.delivery_state import DeliveryState
from bot.feed import JobFeed, JobViews
from bot.retry import Backoff
from spooky.contract import Event, EventType, JobView
from spooky.engine_client import EngineClient, EngineRequestError, EngineUnavailable

if TYPE_CHECKING:
    from bot.host import DeliveryHost

log = logging.getLogger(__name__)

FINAL_EVENTS = (EventType.FINISHED, EventType.FAILED, EventType.CANCELLED)

#: How often the engine is asked for undelivered results the event stream did not bring (a missed
#: or skipped event, an engine whose database was reset behind the bot's cursor).
SWEEP_INTERVAL_S = 60.0


class CursorFile:
    """The id of the last engine event handled, kept in a small file (written atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int:
        try:
            return int(self.path.read_text(encoding="utf-8").strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            log.warning("event cursor %s is unreadable; starting from the beginning", self.path)
            return 0

    def save(self, event_id: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".cursor-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(f"{event_id}\n")
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


@dataclass(frozen=True)
class Shards:
    """The shards this process runs; `ids` None = all of them, so every job is this process's."""

    count: int | None = None
    ids: Sequence[int] | None = None

    def runs(self, guild_id: str | None) -> bool:
        """Whether this process runs the shard of `guild_id` (direct messages: shard 0, as Discord)."""
        if self.ids is None or self.count is None:
            return True
        shard = (int(guild_id) >> 22) % self.count if guild_id else 0
        return shard in self.ids

    @property
    def cursor_name(self) -> str:
        """Each set of shards follows the engine with a cursor of its own."""
        if self.ids is None:
            return "engine-events.cursor"
        return f"engine-events.shards-{'-'.join(map(str, sorted(self.ids)))}-of-{self.count}.cursor"


class Tracker:
    """The bot's single follower of engine events."""

    def __init__(
        self,
        host: DeliveryHost,
        *,
        views: JobViews,
        shards: Shards | None = None,
        cursor_path: Path,
        interval_s: float,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.views = views
        self.shards = shards or Shards()
        self.cursor = CursorFile(cursor_path)
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.clock = clock
        self._feeds: dict[str, JobFeed] = {}
        self._settled: OrderedDict[str, None] = OrderedDict()  # delivered or not ours: ignore
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._last_event = 0
        self._saved_at = 0.0
        self.delivered: list[str] = []  # job ids delivered by this process, oldest first

    @property
    def engine(self) -> EngineClient:
        return self.host.engine

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._last_event = self.cursor.load()
        self._task = asyncio.create_task(self._run(), name="spooky-tracker")
        self._sweeper = asyncio.create_task(self._sweep(), name="spooky-tracker-sweep")

    async def stop(self) -> None:
        """Stop following; unfinished deliveries are picked up again by the next start."""
        tasks = [f.task for f in self._feeds.values() if f.task is not None]
        tasks += [t for t in (self._task, self._sweeper) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._feeds.clear()
        self._task = self._sweeper = None
        if self._last_event:
            self.cursor.save(self._last_event)

    async def watch(self, job: JobView) -> None:
        """Start showing a job the bot has just submitted (no-op if already followed)."""
        if job.id not in self._feeds and job.id not in self._settled:
            self._feed(job)

    async def resume(self, job: JobView) -> None:
        """Deliver again a job whose delivery had ended: a held result whose member asked for it
        through a fresh interaction (its new DeliveryState already stored on the engine)."""
        self._settled.pop(job.id, None)
        if job.id not in self._feeds:
            self._feed(job)

    # --- following -------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff()
        recovered = False
        while True:
            try:
                if not recovered:
                    await self._recover()
                    recovered = True
                async for event in self.engine.events(after=self._last_event):
                    backoff.reset()
                    await self._on_event(event)
                    self._advance(event)
            except asyncio.CancelledError:
                raise
            except EngineUnavailable as e:
                delay = backoff.next()
                log.warning("engine event stream unavailable (%s); retrying in %.0f s", e, delay)
                await asyncio.sleep(delay)
            except Exception:
                delay = backoff.next()
                log.exception("event follower failed; restarting it in %.0f s", delay)
                await asyncio.sleep(delay)
            else:
                # The client's stream ended on its own (it normally reconnects inside): go again.
                await asyncio.sleep(backoff.next())

    async def _recover(self) -> int:
        """Post results that finished while the bot was away, and resume unfinished jobs' messages."""
        # Asked per shard set: the newest 100 undelivered jobs of every server would crowd out ours.
        shards = self.shards
        mine = (shards.count, list(shards.ids)) if shards.ids is not None and shards.count else None
        jobs = await self.engine.jobs(undelivered=True, shards=mine, limit=100)
        new = [j for j in jobs if self._ours(j) and j.id not in self._feeds and j.id not in self._settled]
        for job in new:
            self._feed(job)
        if new:
            log.info("following %d undelivered job(s) from the engine", len(new))
        # A followed job that finished without its final event reaching us.
        stale = [
            j
            for j in jobs
            if j.state.terminal and (f := self._feeds.get(j.id)) and not f.snapshot.state.terminal
        ]
        for job in stale:
            self._feeds[job.id].catch_up(job)
        return sum(j.state.terminal for j in new) + len(stale)

    async def _sweep(self) -> None:
        """Safety net: now and then, pick up finished jobs that no event announced."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                found = await self._recover()
            except EngineUnavailable as e:
                log.debug("undelivered-jobs sweep skipped: %s", e)
                continue
            except Exception:
                log.exception("undelivered-jobs sweep failed")
                continue
            if found:
                log.warning(
                    "%d finished job(s) found by the sweep, not by the event stream (is the cursor %d "
                    "ahead of an engine whose database was reset?)",
                    found,
                    self._last_event,
                )

    def _advance(self, event: Event) -> None:
        self._last_event = max(self._last_event, event.id)
        now = time.monotonic()
        if event.type in FINAL_EVENTS or now - self._saved_at > 1.0:
            self.cursor.save(self._last_event)
            self._saved_at = now

    async def _on_event(self, event: Event) -> None:
        feed = self._feeds.get(event.job_id)
        if feed is None:
            if event.job_id in self._settled:
                return
            try:
                job = await self.engine.job(event.job_id)
            except EngineRequestError as e:
                if e.status == 404:
                    self._settle(event.job_id)
                    return
                raise
            if not self._ours(job) or job.delivered:
                self._settle(job.id)
                return
            feed = self._feeds.get(job.id) or self._feed(job)
        feed.apply(event)

    def _ours(self, job: JobView) -> bool:
        state = DeliveryState.from_client(job.request.client)
        app_id = self.host.application_id
        mine = str(app_id) if app_id else None
        return (
            state.channel_id is not None
            and state.held is None  # it waits for its member's /queue, not for a sweep
            and (mine is None or state.app_id == mine)
            and self.shards.runs(state.guild_id)
        )

    def _feed(self, job: JobView) -> JobFeed:
        feed = JobFeed(
            self.host,
            job,
            views=self.views,
            interval_s=self.interval_s,
            ttl_s=self.ttl_s,
            clock=self.clock,
            on_done=self._finished,
        )
        self._feeds[job.id] = feed
        feed.task = asyncio.create_task(feed.run(), name=f"spooky-job-{job.id}")
        return feed

    def _settle(self, job_id: str) -> None:
        self._settled[job_id] = None
        while len(self._settled) > 10_000:
            self._settled.popitem(last=False)

    def _finished(self, feed: JobFeed, delivered: bool) -> None:
        self._feeds.pop(feed.job_id, None)
        self._settle(feed.job_id)
        if delivered:
            self.delivered.append(feed.job_id)
