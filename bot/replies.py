"""Answering an interaction: acknowledge at once, then tell the asker what happened.

Every command and button answers through these, so all follow the same rules: `defer()` before
any engine call, refusals and errors for the asker only, nothing echoed pings anyone.
"""

from __future__ import annotations

import logging

import discord

from bot.errors import ENGINE_DOWN, UNEXPECTED
from bot.host import host_of
from bot.text import NO_PINGS
from spooky.engine_client import EngineRequestError

log = logging.getLogger(__name__)


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


async def tell(
    interaction: discord.Interaction, message: str, *, view: discord.ui.View | None = None
) -> None:
    """Say something to this user only (with buttons, if `view`), whatever has been answered so far."""
    extra = {"view": view} if view is not None else {}
    if not interaction.response.is_done():
        await interaction.response.send_message(message, ephemeral=True, allowed_mentions=NO_PINGS, **extra)
        return
    if interaction.extras.pop("public_loading", False):
        # A follow-up would replace the public "thinking…" message and inherit its visibility,
        # so remove it first: refusals and errors are for the asker only.
        try:
            await interaction.delete_original_response()
        except discord.HTTPException as e:
            log.debug("could not delete the loading message of %s: %s", interaction.id, e)
    await interaction.followup.send(message, ephemeral=True, allowed_mentions=NO_PINGS, **extra)


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
