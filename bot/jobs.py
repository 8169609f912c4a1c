"""Job actions for an interaction: submit, submit again, fetch, cancel, deliver a held result
here (no discord.ui here).

Shared by the slash commands and the buttons, so both follow the same rules: the interaction id
as idempotency key, refusals shown as the engine wrote them, every submitted job watched by the
tracker so its message follows it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import discord
from pydantic import ValidationError

from bot.delivery_state import DeliveryState
from bot.host import host_of
from bot.origin import delivery_state, is_moderator, origin, upload_limit
from bot.replies import describe_request_error, engine_down, tell
from bot.text import escape
from spooky.contract import JobKind, JobRequest, JobView, RefusalCode
from spooky.engine_client import EngineRefused, EngineRequestError, EngineUnavailable

log = logging.getLogger(__name__)

NO_IMAGE_HINT = "Run /spooky first or attach an image to /nightmare."


async def submit(
    interaction: discord.Interaction, *, kind: JobKind, prompt: str, **fields: Any
) -> JobView | None:
    """Submit a new job for this interaction; on refusal or failure tell the user and return None.

    `fields` are the request's options; None means "not given" (the engine's default).
    """
    try:
        request = JobRequest(
            kind=kind,
            prompt=prompt,
            max_bytes=upload_limit(interaction) if kind is JobKind.NIGHTMARE else None,
            **origin(interaction),
            **{k: v for k, v in fields.items() if v is not None},
        )
    except ValidationError as e:
        first = e.errors()[0]
        await tell(interaction, f"That request is not valid: {first['msg'].removeprefix('Value error, ')}")
        return None
    return await _send(interaction, request)


async def resubmit(interaction: discord.Interaction, source: JobRequest) -> JobView | None:
    """Submit `source` again for this interaction, with no seed (the engine draws a new one).

    Every other option is the source's as it is, whatever options a request has; only the
    fields that belong to the interaction (`Origin`) are this one's.
    """
    request = source.reroll(**origin(interaction))
    return await _send(interaction, request)


async def _send(interaction: discord.Interaction, request: JobRequest) -> JobView | None:
    kind = request.kind
    started = time.monotonic()
    try:
        response = await host_of(interaction).engine.submit(request)
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
    await host_of(interaction).tracker.watch(job)
    return job


async def fetch(interaction: discord.Interaction, job_id: str) -> JobView | None:
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


async def deliver_here(interaction: discord.Interaction, job_id: str) -> None:
    """Post a result that waits for its member (it had nowhere to go) through this interaction.

    The job's DeliveryState becomes this interaction's, stored on the engine first, so a bot
    restarted before the post delivers it here all the same.
    """
    job = await fetch(interaction, job_id)
    if job is None:
        return
    if job.request.requester.user_id != str(interaction.user.id):
        await tell(interaction, "Only the person who asked for this render can have it posted.")
        return
    stored = DeliveryState.from_client(job.request.client)
    if job.delivered or stored.held is None:
        await tell(interaction, "That render has already been delivered, or is on its way.")
        return
    engine = host_of(interaction).engine
    try:
        job = await engine.set_client_state(job_id, delivery_state(interaction).replacing(stored))
    except EngineUnavailable:
        await engine_down(interaction)
        return
    except EngineRequestError as e:
        await tell(interaction, describe_request_error(e))
        return
    log.info(
        "job %s: held result asked for by user %s in channel %s",
        job_id,
        interaction.user.id,
        interaction.channel_id,
    )
    await host_of(interaction).tracker.resume(job)
