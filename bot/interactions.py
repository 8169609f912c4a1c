"""Interactions turned into engine jobs: acknowledge, submit, and tell the user what happened.

Shared by the slash commands and the buttons, so both follow the same rules: `defer()` before any
engine call, the interaction id as idempotency key, refusals shown as the engine wrote them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import discord
from pydantic import ValidationError

from bot.delivery_state import DeliveryState
from bot.errors import ENGINE_DOWN, UNEXPECTED
from bot.host import host_of
from bot.text import NO_PINGS, escape
from spooky.contract import JobKind, JobRequest, JobView, RefusalCode, Requester
from spooky.engine_client import EngineRefused, EngineRequestError, EngineUnavailable

log = logging.getLogger(__name__)

NO_IMAGE_HINT = "Run /spooky first or attach an image to /nightmare."


def is_moderator(interaction: discord.Interaction) -> bool:
    """Manage Server, from the member permissions Discord sent with the interaction."""
    return interaction.guild_id is not None and interaction.permissions.manage_guild


def upload_limit(interaction: discord.Interaction) -> int:
    """Largest attachment this interaction's destination accepts."""
    limit = getattr(interaction, "filesize_limit", None)
    if not limit and interaction.guild is not None:
        limit = interaction.guild.filesize_limit
    return int(limit or host_of(interaction).config.upload_limit_bytes)


async def ack(interaction: discord.Interaction, *, ephemeral: bool = False) -> None:
    """Acknowledge at once ("thinking…"); a public one becomes the job's progress message."""
    if interaction.response.is_done():
        return
    response = await interaction.response.defer(thinking=True, ephemeral=ephemeral)
    host_of(interaction).metrics.observe_ack(interaction)
    interaction.extras["public_loading"] = not ephemeral
    interaction.extras["original_id"] = getattr(response, "message_id", None)


async def engine_down(interaction: discord.Interaction) -> None:
    """Say at once that the engine cannot be reached (and count it)."""
    host_of(interaction).metrics.engine_unreachable.inc()
    await tell(interaction, ENGINE_DOWN)


async def tell(interaction: discord.Interaction, message: str) -> None:
    """Say something to this user only, whatever has been answered so far."""
    if not interaction.response.is_done():
        await interaction.response.send_message(message, ephemeral=True, allowed_mentions=NO_PINGS)
        return
    if interaction.extras.pop("public_loading", False):
        # A follow-up would replace the public "thinking…" message and inherit its visibility,
        # so remove it first: refusals and errors are for the asker only.
        try:
            await interaction.delete_original_response()
        except discord.HTTPException as e:
            log.debug("could not delete the loading message of %s: %s", interaction.id, e)
    await interaction.followup.send(message, ephemeral=True, allowed_mentions=NO_PINGS)


async def report_unexpected(interaction: discord.Interaction, error: BaseException, *, where: str) -> None:
    """Log an unexpected error with its context and give the user a short message."""
    log.error(
        "unexpected error in %s (user %s, guild %s, channel %s)",
        where,
        interaction.user.id if interaction.user else None,
        interaction.guild_id,
        interaction.channel_id,
        exc_info=error,
    )
    try:
        await tell(interaction, UNEXPECTED)
    except discord.HTTPException as e:
        log.warning("could not tell user %s about the error: %s", interaction.user.id, e)


def describe_request_error(e: EngineRequestError) -> str:
    """An engine 4xx (not a refusal) as a sentence, with the engine's own message."""
    return f"The render engine could not take this request: {e.body.error.message}"


def _delivery_state(interaction: discord.Interaction, *, max_bytes: int | None) -> DeliveryState:
    return DeliveryState(
        app_id=str(interaction.application_id),
        token=interaction.token,
        interaction_at=interaction.created_at.timestamp(),
        channel_id=str(interaction.channel_id),
        guild_id=str(interaction.guild_id) if interaction.guild_id is not None else None,
        message_id=str(interaction.extras["original_id"]) if interaction.extras.get("original_id") else None,
        max_bytes=max_bytes,
    )


async def submit(
    interaction: discord.Interaction, *, kind: JobKind, prompt: str, **fields: Any
) -> JobView | None:
    """Submit a job for this interaction; on refusal or failure tell the user and return None."""
    bot = host_of(interaction)
    max_bytes = upload_limit(interaction)
    requester = Requester(
        user_id=str(interaction.user.id),
        channel_id=str(interaction.channel_id),
        guild_id=str(interaction.guild_id) if interaction.guild_id else None,
        user_name=str(interaction.user)[:100],
        is_moderator=is_moderator(interaction),
    )
    try:
        request = JobRequest(
            kind=kind,
            prompt=prompt,
            requester=requester,
            idempotency_key=str(interaction.id),
            client=_delivery_state(interaction, max_bytes=max_bytes).to_client(),
            max_bytes=max_bytes if kind is JobKind.NIGHTMARE else None,
            **{k: v for k, v in fields.items() if v is not None},
        )
    except ValidationError as e:
        first = e.errors()[0]
        await tell(interaction, f"That request is not valid: {first['msg'].removeprefix('Value error, ')}")
        return None
    started = time.monotonic()
    try:
        response = await bot.engine.submit(request)
    except EngineUnavailable as e:
        log.warning("engine unreachable for %s from user %s: %s", kind, interaction.user.id, e)
        await engine_down(interaction)
        return None
    except EngineRefused as e:
        refusal = e.refusal
        log.info(
            "refused %s for user %s in guild %s: %s (%s)",
            kind,
            interaction.user.id,
            interaction.guild_id,
            refusal.code,
            refusal.limit,
        )
        message = refusal.message
        if refusal.code is RefusalCode.NO_PREVIOUS_IMAGE and "/spooky" not in message:
            message = f"{message} {NO_IMAGE_HINT}"
        await tell(interaction, message)
        return None
    except EngineRequestError as e:
        log.warning("engine rejected %s from user %s: %s %s", kind, interaction.user.id, e.status, e.body)
        await tell(interaction, describe_request_error(e))
        return None
    job = response.job
    log.info(
        "job %s (%s) submitted for user %s in guild %s in %.0f ms%s",
        job.id,
        kind,
        interaction.user.id,
        interaction.guild_id,
        (time.monotonic() - started) * 1000,
        " (duplicate)" if response.duplicate else "",
    )
    await bot.tracker.watch(job)
    return job


async def fetch_job(interaction: discord.Interaction, job_id: str) -> JobView | None:
    """The engine's view of a job, or None after telling the user why not."""
    try:
        return await host_of(interaction).engine.job(job_id)
    except EngineUnavailable:
        await engine_down(interaction)
    except EngineRequestError as e:
        if e.status == 404:
            await tell(interaction, "That render is no longer known to the engine; run /spooky again.")
        else:
            await tell(interaction, describe_request_error(e))
    return None


async def cancel(interaction: discord.Interaction, job_id: str) -> None:
    """Cancel a job for its owner or a moderator, and say what happened (ephemeral)."""
    try:
        job = await host_of(interaction).engine.cancel(
            job_id, str(interaction.user.id), is_moderator=is_moderator(interaction)
        )
    except EngineUnavailable:
        await engine_down(interaction)
        return
    except EngineRequestError as e:
        if e.status == 403:
            await tell(interaction, "Only the person who asked for this render or a moderator can cancel it.")
        elif e.status == 404:
            await tell(interaction, f"There is no render with id `{job_id}`.")
        elif e.status == 409:
            await tell(interaction, "That render has already finished; there is nothing to cancel.")
        else:
            await tell(interaction, describe_request_error(e))
        return
    log.info("job %s cancelled by user %s", job_id, interaction.user.id)
    await tell(interaction, f"Cancelled the render of “{escape(job.request.prompt, limit=80)}”.")
