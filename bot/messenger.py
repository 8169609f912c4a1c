"""Where one job's message lives: the interaction's webhook while its token is fresh, then the
channel, or the member's DMs where the bot may not post in the channel.

An interaction token lives 15 minutes (SPEC §5). Until `interaction_ttl_s` the job's progress
message is the interaction's original response, edited through the webhook; after that (or as soon
as Discord says the token is invalid) the bot posts its own message and edits that one: in the
interaction's channel when the server installed the app, else (a DM, a group DM, a server that
never invited the bot: `DeliveryState.fallback` "dm") in the member's DMs, saying where the render
came from, and only the result (progress is not worth a DM). No channel endpoint is used where the
bot is not a member. A channel that refuses the bot (Missing Access or Permissions) turns the job
to the DMs too. The message ids are kept in the job's `client` dict on the engine, so a restarted
bot finds them.

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


def dms_closed(e: discord.HTTPException) -> bool:
    """Cannot send messages to this user: their DMs are closed to the bot."""
    return e.code == 50007


def channel_refused(e: discord.HTTPException) -> bool:
    """Missing Access / Missing Permissions: the bot may not post in that channel (any more)."""
    return e.code in (50001, 50013)


def jump_link(state: DeliveryState) -> str:
    """A link to where the render was asked for: its interaction message, else its channel."""
    where = f"https://discord.com/channels/{state.guild_id or '@me'}/{state.channel_id}"
    return f"{where}/{state.message_id}" if state.message_id else where


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
        if self.token_fresh:
            return "interaction"
        return "dm" if self.state.fallback == "dm" else "channel"

    @property
    def quiet(self) -> bool:
        """Progress has nowhere to go: the token is spent and the job's message is in the
        member's DMs, which get the result only."""
        return self.via == "dm"

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

    async def _target(self) -> discord.PartialMessageable | discord.DMChannel:
        """Where the bot's own message for this job goes: the channel, or the member's DM."""
        state = self.state
        if state.fallback != "dm":
            guild, channel = state.guild_id, state.channel_id
            if channel is None:
                raise ValueError(f"job {self.job_id} has no channel to post in")
            return self.host.get_partial_messageable(int(channel), guild_id=int(guild) if guild else None)
        if state.dm_channel_id:
            return self.host.get_partial_messageable(
                int(state.dm_channel_id), type=discord.ChannelType.private
            )
        if state.user_id is None:
            raise ValueError(f"job {self.job_id} has no member to write to")
        dm = await self.host.create_dm(discord.Object(int(state.user_id)))
        state.dm_channel_id = str(dm.id)
        return dm

    async def _channel(
        self, content: str, uploads: Sequence[Upload] | None, view: discord.ui.View | None
    ) -> discord.Message:
        try:
            return await self._own_message(content, uploads, view)
        except discord.Forbidden as e:
            if self.state.fallback == "dm" or not channel_refused(e) or self.state.user_id is None:
                raise  # (a job stored before DM fallbacks existed does not know its member)
            log.warning(
                "job %s: the channel refused the bot (%s); writing to the member instead", self.job_id, e
            )
            self.state.fallback, self.state.channel_message_id = "dm", None
            return await self._own_message(content, uploads, view)

    async def _own_message(
        self, content: str, uploads: Sequence[Upload] | None, view: discord.ui.View | None
    ) -> discord.Message:
        if self.state.fallback == "dm":
            content = (
                f"📬 From your render in {jump_link(self.state)} (its interaction had expired):\n{content}"
            )
        channel = await self._target()
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
        if not existing and self.state.fallback != "dm":
            await self._retire_original()
        return message

    async def _edit_channel(
        self, message_id: int, content: str, uploads: Sequence[Upload] | None, view: discord.ui.View | None
    ) -> discord.Message:
        channel = await self._target()
        return await channel.get_partial_message(message_id).edit(
            content=content,
            attachments=_files(uploads) if uploads is not None else MISSING,
            view=view,
            allowed_mentions=NO_PINGS,
        )

    async def _retire_original(self) -> None:
        """Point the stale interaction message at the new one (best effort: it may not be editable)."""
        original = self.state.message_id
        if not original:
            return
        try:
            channel = await self._target()
            await channel.get_partial_message(int(original)).edit(
                content=CONTINUED, attachments=[], view=None, allowed_mentions=NO_PINGS
            )
        except discord.HTTPException as e:
            log.debug("job %s: could not retire the interaction message %s: %s", self.job_id, original, e)
