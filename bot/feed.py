"""One job's feed: fold its events, keep its message current (throttled), deliver its result once.

The tracker starts a feed per followed job and hands it the job's events; the feed folds them into
at most one edit per `progress_interval_s` and, once the job has ended, posts the result,
retrying while Discord or the engine is unavailable (a video refused as too large is re-encoded
smaller), and only then marks the job delivered. A result with nowhere to go (the token spent,
the member's DMs closed) is held: marked so on the engine, it waits for the member's /queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import aiohttp
import discord

from bot.delivery_state import DeliveryState
from bot.messenger import JobMessages, Upload, dms_closed, too_large
from bot.progress import EditThrottle, JobSnapshot, render_progress, render_result, render_stopped
from bot.retry import Backoff, engine_call
from bot.text import size
from spooky.contract import Event, JobKind, JobState, JobView
from spooky.engine_client import EngineRequestError, EngineUnavailable

if TYPE_CHECKING:
    from bot.host import DeliveryHost

log = logging.getLogger(__name__)

#: Errors after which posting is worth trying again (Discord or the network is down for a while).
TRANSIENT = (discord.DiscordServerError, aiohttp.ClientError, OSError, asyncio.TimeoutError)

#: Discord's upload limits by boost tier; a 413 below our guess means the server's is one of these.
DISCORD_UPLOAD_TIERS = (10 * 1024 * 1024, 50 * 1024 * 1024, 100 * 1024 * 1024)

#: Re-encodes asked for one result after 413s, each for a strictly smaller budget.
MAX_REFITS = 3


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


class JobViews(Protocol):
    """The buttons of a job's message (bot.views.JobButtons): handed in, so the feed needs no
    button and no job action."""

    def progress(self, job_id: str) -> discord.ui.View | None: ...

    def result(self, job: JobView) -> discord.ui.View | None: ...


class JobFeed:
    """One job: fold its events, edit its message (throttled), deliver its result."""

    def __init__(
        self,
        host: DeliveryHost,
        job: JobView,
        *,
        views: JobViews,
        interval_s: float,
        ttl_s: float,
        clock: Callable[[], float],
        on_done: Callable[[JobFeed, bool], None],
    ) -> None:
        self.host = host
        self.views = views
        self.job_id = job.id
        self.snapshot = JobSnapshot.from_job(job)
        self.messages = JobMessages(
            host,
            job.id,
            DeliveryState.from_client(job.request.client),
            ttl_s=ttl_s,
            on_state=self._save_state,
            clock=clock,
        )
        self.throttle = EditThrottle(interval_s)
        self._on_done = on_done
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
            self._on_done(self, delivered)

    async def _save_state(self, state: DeliveryState) -> None:
        """Store the message ids on the engine, waiting out an unavailable engine: a bot restarted
        without them would post the job's message a second time once the nonce has expired."""
        engine, client = self.host.engine, state.to_client()
        try:
            await engine_call("storing the message ids", lambda: engine.set_client_state(self.job_id, client))
        except EngineRequestError as e:
            # The engine refused the record itself (the job is gone): retrying cannot help.
            log.error("job %s: the engine refused its message ids: %s %s", self.job_id, e.status, e.body)

    async def _show_progress(self) -> None:
        if self.messages.quiet:
            return  # the token is spent and the member's DMs get the result only
        snap = self.snapshot
        text = render_progress(snap)
        uploads: list[Upload] | None = None
        if snap.still and snap.still != self._shown_still:
            try:
                uploads = [("still.png", await self.host.engine.artifact(snap.still))]
            except (EngineUnavailable, EngineRequestError) as e:
                log.warning("job %s: could not fetch still %s: %s", self.job_id, snap.still, e)
        if text == self._shown_text and uploads is None:
            return  # the message already says this: an edit would only spend rate limit
        try:
            await self.messages.show(text, uploads=uploads, view=self.views.progress(self.job_id))
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
        or Discord refused it for good), or held for its member; None = the job is running again,
        keep following."""
        engine = self.host.engine
        job = await engine_call("fetching the job", lambda: engine.job(self.job_id))
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
        await engine_call("marking delivered", lambda: engine.mark_delivered(self.job_id))
        log.info("job %s (%s, %s) delivered via %s", job.id, job.kind, job.state, self.messages.via)
        return True

    async def _artifact(self, artifact_id: str) -> bytes:
        engine = self.host.engine
        return await engine_call("fetching a result", lambda: engine.artifact(artifact_id))

    async def _post_result(self, job: JobView) -> bool:
        view = self.views.result(job)
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
                if dms_closed(e):
                    # Nowhere left to post it: it waits for the member, whose /queue offers it.
                    log.info(
                        "job %s: the member's DMs are closed; the result waits for their /queue", self.job_id
                    )
                    self.messages.state.held = "dms_closed"
                    await self._save_state(self.messages.state)
                    return False
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
        return self.messages.state.max_bytes or self.host.config.upload_limit_bytes

    def _over_limit(self, what: str, sent: int) -> str:
        """'⚠️ The video (70.2 KB) is over this server's upload limit (48.0 KB)', in real sizes."""
        believed = self._believed_limit()
        limit = size(believed) if believed < sent else f"below the {size(believed)} it announced"
        return f"⚠️ The {what} ({size(sent)}) is over this server's upload limit ({limit})"

    async def _refit(self, video_id: str, sent: int) -> tuple[list[Upload], str | None]:
        """Ask the engine to re-encode the video under a smaller budget; explain if it cannot."""
        target = refit_target(sent, self._believed_limit())
        engine = self.host.engine
        log.info("job %s: video of %d bytes too large for Discord; asking for %d", self.job_id, sent, target)
        try:
            artifact = await engine_call("refitting the video", lambda: engine.fit_artifact(video_id, target))
        except EngineRequestError as e:
            why = e.body.error.message
            note = (
                f"{self._over_limit('video', sent)} and could not be re-encoded under {size(target)}: {why}"
            )
            return [], note
        data = await self._artifact(artifact.id)
        return [("nightmare.mp4", data)], None
