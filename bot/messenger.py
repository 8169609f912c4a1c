"""Where one job's message lives: the interaction's webhook while its token is fresh, then the channel.

An interaction token lives 15 minutes (SPEC §5). Until `interaction_ttl_s` the job's progress
message is the interaction's original response, edited through the webhook; after that (or as soon
as Discord says the token is invalid) the bot posts its own channel message and edits that one.
The message ids are kept in the job's `client` dict on the engine, so a restarted bot finds them.

The channel message is posted with a nonce derived from the job and `enforce_nonce`: a bot killed
after Discord created the message but before its id was stored sends the same nonce again on
restart, and Discord answers with the message it already has instead of creating a second one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import discord
from discord.utils import MISSING

from bot.delivery_state import DeliveryState
from bot.text import NO_PINGS

if TYPE_CHECKING:
    from bot.host import DeliveryHost

log = logging.getLogger(__name__)

#: (filename, bytes): rebuilt into fresh discord.File objects for every attempt.
Upload = tuple[str, bytes]

CONTINUED = "⏩ This render continues in a newer message below."


def token_invalid(e: discord.HTTPException) -> bool:
    """Discord's answers for an expired or unknown interaction token."""
    return e.status == 401 or e.code in (50027, 10015, 10062)


def message_gone(e: discord.HTTPException) -> bool:
    """Someone deleted the message (Unknown Message)."""
    return e.code == 10008


def too_large(e: discord.HTTPException) -> bool:
    return e.status == 413 or e.code == 40005


def post_nonce(job_id: str, replaces: str | None) -> str:
    """The nonce of the job's channel post: the same for every retry and restart, a new one only
    when the message it would return (`replaces`) was deleted. Discord allows 25 characters."""
    return hashlib.sha256(f"{job_id}/{replaces or ''}".encode()).hexdigest()[:25]


def _files(uploads: Sequence[Upload]) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in uploads]


class JobMessages:
    """Edit (or, after the token, post and edit) the single message of one job."""

    def __init__(
        self,
        host: DeliveryHost,
        job_id: str,
        state: DeliveryState,
        *,
        ttl_s: float,
        on_state: Callable[[DeliveryState], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.job_id = job_id
        self.state = state
        self.ttl_s = ttl_s
        self._on_state = on_state
        self._clock = clock
        self._token_dead = False

    @property
    def token_fresh(self) -> bool:
        if self._token_dead or not self.state.token or not self.state.app_id:
            return False
        return self._clock() - self.state.interaction_at < self.ttl_s

    @property
    def via(self) -> str:
        return "interaction" if self.token_fresh else "channel"

    async def show(
        self, content: str, *, uploads: Sequence[Upload] | None, view: discord.ui.View | None
    ) -> discord.Message:
        """Make the job's message say `content`; `uploads=None` keeps its attachments, [] removes them.

        Raises discord.HTTPException / aiohttp errors for the caller to retry or report.
        """
        if self.token_fresh:
            try:
                return await self._edit_original(content, uploads, view)
            except discord.HTTPException as e:
                if token_invalid(e):
                    log.info(
                        "job %s: interaction token no longer valid (%s); using the channel", self.job_id, e
                    )
                elif message_gone(e):
                    log.info("job %s: its message was deleted; posting a new one in the channel", self.job_id)
                    self.state.message_id = None
                else:
                    raise
                self._token_dead = True
        return await self._channel(content, uploads, view)

    async def _edit_original(
        self, content: str, uploads: Sequence[Upload] | None, view: discord.ui.View | None
    ) -> discord.Message:
        assert self.state.app_id and self.state.token  # token_fresh checked both
        webhook = self.host.interaction_webhook(int(self.state.app_id), self.state.token)
        # discord.py quotes a string id; "@original" is only a fallback when the callback
        # response did not carry the message id.
        message_id: int | str = int(self.state.message_id) if self.state.message_id else "@original"
        message = await webhook.edit_message(
            message_id,  # type: ignore[arg-type]
            content=content,
            attachments=_files(uploads) if uploads is not None else MISSING,
            view=view,
            allowed_mentions=NO_PINGS,
        )
        if not self.state.message_id:
            self.state.message_id = str(message.id)
        return message

    def _channel_obj(self) -> discord.PartialMessageable:
        guild, channel = self.state.guild_id, self.state.channel_id
        if channel is None:
            raise ValueError(f"job {self.job_id} has no channel to post in")
        return self.host.get_partial_messageable(int(channel), guild_id=int(guild) if guild else None)

    async def _channel(
        self, content: str, uploads: Sequence[Upload] | None, view: discord.ui.View | None
    ) -> discord.Message:
        channel = self._channel_obj()
        existing = self.state.channel_message_id
        if existing:
            try:
                return await self._edit_channel(int(existing), content, uploads, view)
            except discord.NotFound:
                log.info("job %s: channel message %s was deleted; posting a new one", self.job_id, existing)
        files = _files(uploads or [])  # a new message cannot keep attachments it never had
        message = await channel.send(
            content,
            files=files or MISSING,
            view=view or MISSING,
            allowed_mentions=NO_PINGS,
            nonce=post_nonce(self.job_id, existing),
        )
        if message.content != content or len(message.attachments) != len(files):
            # Discord returned the message an earlier (killed) attempt posted with this nonce,
            # as it was then: bring it up to date.
            log.info("job %s: channel message %s was already posted; updating it", self.job_id, message.id)
            message = await self._edit_channel(message.id, content, uploads or [], view)
        self.state.channel_message_id = str(message.id)
        await self._on_state(self.state)
        if not existing:
            await self._retire_original()
        return message

    async def _edit_channel(
        self, message_id: int, content: str, uploads: Sequence[Upload] | None, view: discord.ui.View | None
    ) -> discord.Message:
        return (
            await self._channel_obj()
            .get_partial_message(message_id)
            .edit(
                content=content,
                attachments=_files(uploads) if uploads is not None else MISSING,
                view=view,
                allowed_mentions=NO_PINGS,
            )
        )

    async def _retire_original(self) -> None:
        """Point the stale interaction message at the new one (best effort: it may not be editable)."""
        original = self.state.message_id
        if not original:
            return
        try:
            await (
                self._channel_obj()
                .get_partial_message(int(original))
                .edit(content=CONTINUED, attachments=[], view=None, allowed_mentions=NO_PINGS)
            )
        except discord.HTTPException as e:
            log.debug("job %s: could not retire the interaction message %s: %s", self.job_id, original, e)
