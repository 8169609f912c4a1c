"""A member's picture as a render's start: found, checked at the edge, downloaded, handed to the engine.

A picture is an attachment (/spooky image:, /nightmare image:, or one on a message the member used
Apps > Spookify / Nightmare on) or an image embed on such a message (a posted image link shows
as its thumbnail, a rich embed as its image). What Discord says about an attachment (type, size)
is checked before anything is downloaded; an embed says nothing, so it is fetched from Discord's
media proxy (`proxy_url`; a link Discord did not proxy is refused: the bot never visits the link's
own site), over http(s) only, refused by its Content-Type and cut off once it is larger than we take. The
engine checks every upload again (type, size, pixels, decompression bombs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
import yarl

from bot import jobs
from bot.errors import BadAttachment
from bot.host import host_of
from bot.replies import describe_request_error, engine_down, tell
from spooky.contract import JobKind
from spooky.engine_client import EngineRefused, EngineRequestError, EngineUnavailable

log = logging.getLogger(__name__)

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
MAX_IMAGE_BYTES = 8 * 1024 * 1024
#: How long fetching a linked picture may take, all of it.
FETCH_TIMEOUT_S = 20.0
CHUNK = 64 * 1024

NO_PICTURE = (
    "That message has no picture to use: pick a message with an image attached, or with an image "
    "link Discord shows a preview of."
)


@dataclass(frozen=True)
class Picture:
    """A picture to download, and what Discord said about it."""

    name: str  # what the member sees it called
    url: str
    attachment: discord.Attachment | None = None  # None: an embed's picture (type and size unknown)


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _refuse_type(name: str, media: str) -> BadAttachment:
    shown = media or "an unknown type"
    return BadAttachment(f"“{name}” is {shown}; attach a PNG, JPEG, WebP or GIF image instead.")


def _refuse_size(name: str, size: int | None) -> BadAttachment:
    most = MAX_IMAGE_BYTES // 2**20
    if size is None:  # cut off while reading: it never said how large
        return BadAttachment(f"“{name}” is too large: images up to {most} MB are accepted.")
    return BadAttachment(f"“{name}” is {size / 2**20:.1f} MB; images up to {most} MB are accepted.")


def from_attachment(attachment: discord.Attachment) -> Picture:
    """The attachment as a picture, refused (BadAttachment) when it is plainly not one we take."""
    media = _media(attachment.content_type)
    if media not in IMAGE_TYPES:
        raise _refuse_type(attachment.filename, media)
    if attachment.size > MAX_IMAGE_BYTES:
        raise _refuse_size(attachment.filename, attachment.size)
    return Picture(attachment.filename, attachment.url, attachment)


NOT_PROXIED = "Discord did not proxy that picture's link, so I will not fetch it; attach the image instead."


def on_message(message: discord.Message) -> Picture | None:
    """The picture on a message: its first image attachment, else its first image embed; None
    when it has neither. An image attachment of a type we do not take is refused (BadAttachment)."""
    for attachment in message.attachments:
        if _media(attachment.content_type).startswith("image/"):
            return from_attachment(attachment)
    for embed in message.embeds:
        for media in (embed.image, embed.thumbnail):
            if not (media.proxy_url or media.url):
                continue
            # Only through Discord's media proxy: the bot never visits a link's own site (which
            # could be an address inside the bot's network, or one that logs who looked).
            url = media.proxy_url
            if not url or yarl.URL(url).scheme not in ("http", "https"):
                raise BadAttachment(NOT_PROXIED)
            name = yarl.URL(media.url or url).name or "the linked picture"
            return Picture(name, url)
    return None


async def _fetch(picture: Picture) -> bytes:
    """A linked picture's bytes, at most MAX_IMAGE_BYTES (BadAttachment otherwise)."""
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(picture.url, max_redirects=3) as response,
    ):
        if response.status != 200:
            raise BadAttachment(
                f"“{picture.name}” could not be fetched (HTTP {response.status}); attach it instead."
            )
        media = _media(response.headers.get("Content-Type"))
        if media not in IMAGE_TYPES:
            raise _refuse_type(picture.name, media)
        if (response.content_length or 0) > MAX_IMAGE_BYTES:
            raise _refuse_size(picture.name, response.content_length)
        data = bytearray()
        async for chunk in response.content.iter_chunked(CHUNK):
            data += chunk
            if len(data) > MAX_IMAGE_BYTES:
                raise _refuse_size(picture.name, None)  # stop reading: whatever it announced
        return bytes(data)


async def download(picture: Picture) -> bytes | None:
    """The picture's bytes; None after saying why not. BadAttachment for what the member can fix."""
    try:
        if picture.attachment is not None:
            return await picture.attachment.read()
        return await _fetch(picture)
    except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as e:
        log.warning("could not download picture %s: %s", picture.url, e)
        return None


async def upload(interaction: discord.Interaction, picture: Picture) -> str | None:
    """Download the picture and hand it to the engine; its artifact id, or None after telling
    the member why not."""
    data = await download(picture)
    if data is None:
        await tell(interaction, "I could not download that image; please attach it again.")
        return None
    try:
        artifact = await host_of(interaction).engine.upload(
            data, user_id=str(interaction.user.id), channel_id=str(interaction.channel_id)
        )
    except EngineUnavailable:
        await engine_down(interaction)
        return None
    except EngineRefused as e:
        log.info("picture from user %s refused: %s", interaction.user.id, e.refusal.code)
        await tell(interaction, e.refusal.message)
        return None
    except EngineRequestError as e:
        await tell(interaction, describe_request_error(e))
        return None
    return artifact.id


async def submit_from(
    interaction: discord.Interaction, picture: Picture | None, *, kind: JobKind, prompt: str, **fields: Any
) -> None:
    """Submit a job that starts from `picture` (handed to the engine first), or from none."""
    init_artifact = None
    if picture is not None:
        init_artifact = await upload(interaction, picture)
        if init_artifact is None:
            return
    await jobs.submit(interaction, kind=kind, prompt=prompt, init_artifact=init_artifact, **fields)
