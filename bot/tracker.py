"""Follow the engine's events, keep each job's message current, deliver every result exactly once.

One background task reads `engine.events(after=cursor)` for all guilds and persists the last event
id (atomic write) so a restarted bot resumes where it stopped; at start it also asks the engine for
finished jobs that were never delivered. Each job has a small feed task that coalesces events into
at most one edit per `progress_interval_s` and, at the end, posts the result, retrying while
Discord or the engine is unavailable, and only then marks the job delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import aiohttp
import discord

from bot.delivery_state import DeliveryState
from bot.messenger import JobMessages, Upload, too_large
from bot.progress import EditThrottle, JobSnapshot, render_progress, render_result, render_stopped
from bot.text import size
from spooky.contract import Event, EventType, JobKind, JobState, JobView
from spooky.engine_client import EngineClient, EngineRequestError, EngineUnavailable

if TYPE_CHECKING:
    from bot.host import DeliveryHost

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors after which posting is worth trying again (Discord or the network is down for a while).
TRANSIENT = (discord.DiscordServerError, aiohttp.ClientError, OSError, asyncio.TimeoutError)

FINAL_EVENTS = (EventType.FINISHED, EventType.FAILED, EventType.CANCELLED)

#: How often the engine is asked for undelivered results the event stream did not bring (a missed
#: or skipped event, an engine whose database was reset behind the bot's cursor).
SWEEP_INTERVAL_S = 60.0

#: Discord's upload limits by boost tier; a 413 below our guess means the server's is one of these.
DISCORD_UPLOAD_TIERS = (10 * 1024 * 1024, 50 * 1024 * 1024, 100 * 1024 * 1024)

#: Re-encodes asked for one result after 413s, each for a strictly smaller budget.
MAX_REFITS = 3


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


class Backoff:
    """1, 2, 4 … `cap` seconds."""

    def __init__(self, first: float = 1.0, cap: float = 30.0) -> None:
        self.first, self.cap, self._next = first, cap, first

    def next(self) -> float:
        delay, self._next = self._next, min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


def refit_target(sent_bytes: int, believed_limit: int) -> int:
    """Byte budget to ask the engine for after Discord refused `sent_bytes` as too large.

    Always strictly below `sent_bytes`: asking for what was just refused would only be refused again.
    """
    lower_tiers = [t for t in DISCORD_UPLOAD_TIERS if t < min(sent_bytes, believed_limit)]
    if lower_tiers:
        return int(max(lower_tiers) * 0.95)
    if sent_bytes > believed_limit:
        # Over the limit the interaction announced: leave room for the request's own overhead.
        return int(believed_limit * 0.95)
    # No known tier below: the limit is smaller than we were told; halve and try again.
    return sent_bytes // 2


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


class JobViews(Protocol):
    """The buttons of a job's message (bot.views.JobButtons): handed in, so this module needs no
    button and no job action."""

    def progress(self, job_id: str) -> discord.ui.View | None: ...

    def result(self, job: JobView) -> discord.ui.View | None: ...


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
            and (mine is None or state.app_id == mine)
            and self.shards.runs(state.guild_id)
        )

    def _feed(self, job: JobView) -> JobFeed:
        feed = JobFeed(self, job)
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

    # --- engine calls that wait out an unavailable engine --------------------------------------

    async def engine_call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        backoff = Backoff()
        while True:
            try:
                return await call()
            except EngineUnavailable as e:
                delay = backoff.next()
                log.warning("engine unavailable during %s (%s); retrying in %.0f s", what, e, delay)
                await asyncio.sleep(delay)


class JobFeed:
    """One job: fold its events, edit its message (throttled), deliver its result."""

    def __init__(self, tracker: Tracker, job: JobView) -> None:
        self.tracker = tracker
        self.job_id = job.id
        self.snapshot = JobSnapshot.from_job(job)
        self.messages = JobMessages(
            tracker.host,
            job.id,
            DeliveryState.from_client(job.request.client),
            ttl_s=tracker.ttl_s,
            on_state=self._save_state,
            clock=tracker.clock,
        )
        self.throttle = EditThrottle(tracker.interval_s)
        self._wake = asyncio.Event()
        self._wake.set()  # show the current state at once
        self._shown_still: str | None = None
        self._shown_text: str | None = None  # the progress text last sent, to skip no-op edits
        self.task: asyncio.Task[None] | None = None

    def apply(self, event: Event) -> None:
        if self.snapshot.apply(event):
            self._wake.set()

    def catch_up(self, job: JobView) -> None:
        """Take the engine's view of the job when its events did not arrive."""
        self.snapshot = JobSnapshot.from_job(job)
        self._wake.set()

    async def run(self) -> None:
        """Show each new state (throttled) until the job ends, then deliver its result once."""
        delivered = False
        try:
            while True:
                await self._wake.wait()
                # Events arriving during this wait are folded into one edit.
                await asyncio.sleep(self.throttle.wait_s())
                self._wake.clear()
                if not self.snapshot.state.terminal:
                    await self._show_progress()
                    continue
                outcome = await self._deliver()
                if outcome is not None:
                    delivered = outcome
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "job %s: its message feed failed; the result will be retried on restart", self.job_id
            )
        finally:
            self.tracker._finished(self, delivered)

    async def _save_state(self, state: DeliveryState) -> None:
        """Store the message ids on the engine, waiting out an unavailable engine: a bot restarted
        without them would post the job's message a second time once the nonce has expired."""
        engine, client = self.tracker.engine, state.to_client()
        try:
            await self.tracker.engine_call(
                "storing the message ids", lambda: engine.set_client_state(self.job_id, client)
            )
        except EngineRequestError as e:
            # The engine refused the record itself (the job is gone): retrying cannot help.
            log.error("job %s: the engine refused its message ids: %s %s", self.job_id, e.status, e.body)

    async def _show_progress(self) -> None:
        snap = self.snapshot
        text = render_progress(snap)
        uploads: list[Upload] | None = None
        if snap.still and snap.still != self._shown_still:
            try:
                uploads = [("still.png", await self.tracker.engine.artifact(snap.still))]
            except (EngineUnavailable, EngineRequestError) as e:
                log.warning("job %s: could not fetch still %s: %s", self.job_id, snap.still, e)
        if text == self._shown_text and uploads is None:
            return  # the message already says this: an edit would only spend rate limit
        try:
            await self.messages.show(text, uploads=uploads, view=self.tracker.views.progress(self.job_id))
        except (discord.HTTPException, *TRANSIENT) as e:
            # Progress is best effort: the next event or the result will bring the message up to date.
            log.warning("job %s: progress edit failed: %s", self.job_id, e)
        else:
            self._shown_text = text
            if uploads:
                self._shown_still = snap.still
        finally:
            self.throttle.mark()

    # --- the result ------------------------------------------------------------------------------

    async def _deliver(self) -> bool | None:
        """Post the result and mark it delivered: True; False = not ours to post (already delivered,
        or Discord refused it for good); None = the job is running again, keep following."""
        engine = self.tracker.engine
        job = await self.tracker.engine_call("fetching the job", lambda: engine.job(self.job_id))
        if job.delivered:
            return False
        if not job.state.terminal:
            # An INTERRUPTED event we read as final but the engine retried: keep following.
            self.snapshot = JobSnapshot.from_job(job)
            self._wake.set()
            return None
        if job.state is JobState.SUCCEEDED:
            posted = await self._post_result(job)
        else:
            posted = await self._post(render_stopped(job), [], None)
        if not posted:
            return False
        await self.tracker.engine_call("marking delivered", lambda: engine.mark_delivered(self.job_id))
        log.info("job %s (%s, %s) delivered via %s", job.id, job.kind, job.state, self.messages.via)
        return True

    async def _artifact(self, artifact_id: str) -> bytes:
        engine = self.tracker.engine
        return await self.tracker.engine_call("fetching a result", lambda: engine.artifact(artifact_id))

    async def _post_result(self, job: JobView) -> bool:
        view = self.tracker.views.result(job)
        if job.kind is JobKind.SPOOKY:
            uploads = [
                (f"{role}.png", await self._artifact(job.artifacts[role]))
                for role in ("stylegan", "spooky")
                if role in job.artifacts
            ]
            return await self._post(render_result(job), uploads, view)
        video_id = job.artifacts.get("video")
        if video_id is None:
            return await self._post(render_result(job, note="The engine returned no video."), [], view)
        data = await self._artifact(video_id)
        return await self._post(render_result(job), [("nightmare.mp4", data)], view, refit=video_id)

    async def _post(
        self,
        content: str,
        uploads: list[Upload],
        view: discord.ui.View | None,
        *,
        refit: str | None = None,
    ) -> bool:
        """Post until it works; a 413 asks the engine for a smaller video (each time strictly
        smaller, at most MAX_REFITS times), then posts without the file. False = gave up."""
        backoff = Backoff()
        refits = 0
        while True:
            await asyncio.sleep(self.throttle.wait_s())
            try:
                await self.messages.show(content, uploads=uploads, view=view)
                self.throttle.mark()
                return True
            except discord.HTTPException as e:
                self.throttle.mark()
                sent = sum(len(b) for _, b in uploads)
                if too_large(e) and sent:
                    if refit is not None and refits < MAX_REFITS:
                        refits += 1
                        uploads, note = await self._refit(refit, sent)
                        if note:
                            content = f"{content}\n{note}"
                        continue
                    what = "video" if refit is not None else "result"
                    note = f"{self._over_limit(what, sent)} and could not be made small enough to post."
                    content, uploads = f"{content}\n{note}", []
                    continue
                if isinstance(e, discord.DiscordServerError) or e.status == 429:
                    delay = backoff.next()
                    log.warning(
                        "job %s: Discord failed the result post (%s); retrying in %.0f s",
                        self.job_id,
                        e,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                log.error("job %s: Discord refused the result (%s); it stays undelivered", self.job_id, e)
                return False
            except TRANSIENT as e:
                self.throttle.mark()
                delay = backoff.next()
                log.warning("job %s: could not reach Discord (%r); retrying in %.0f s", self.job_id, e, delay)
                await asyncio.sleep(delay)

    def _believed_limit(self) -> int:
        return self.messages.state.max_bytes or self.tracker.host.config.upload_limit_bytes

    def _over_limit(self, what: str, sent: int) -> str:
        """'⚠️ The video (70.2 KB) is over this server's upload limit (48.0 KB)', in real sizes."""
        believed = self._believed_limit()
        limit = size(believed) if believed < sent else f"below the {size(believed)} it announced"
        return f"⚠️ The {what} ({size(sent)}) is over this server's upload limit ({limit})"

    async def _refit(self, video_id: str, sent: int) -> tuple[list[Upload], str | None]:
        """Ask the engine to re-encode the video under a smaller budget; explain if it cannot."""
        target = refit_target(sent, self._believed_limit())
        engine = self.tracker.engine
        log.info("job %s: video of %d bytes too large for Discord; asking for %d", self.job_id, sent, target)
        try:
            artifact = await self.tracker.engine_call(
                "refitting the video", lambda: engine.fit_artifact(video_id, target)
            )
        except EngineRequestError as e:
            why = e.body.error.message
            note = (
                f"{self._over_limit('video', sent)} and could not be re-encoded under {size(target)}: {why}"
            )
            return [], note
        data = await self._artifact(artifact.id)
        return [("nightmare.mp4", data)], None
