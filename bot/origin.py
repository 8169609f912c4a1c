"""Where an interaction comes from: who asked, with which rights, what its destination accepts.

The fields of a job request that say so (`Origin`) are built here once, for a new job and for a
button that submits one again alike.

An interaction may come from a server that installed the app (its guild install: the bot is a
member there) or from anywhere a member installed the app for themselves (their user install): a
DM, a group DM, a server that never invited the bot. Only the first has a server behind it: its
limits, its moderators, and a channel the bot may post in. Everywhere else the engine applies its
default limits per member (`Requester.guild_id` None) and the job's messages stay within the
interaction, then go to the member's DMs.
"""

from __future__ import annotations

from typing import TypedDict

import discord

from bot.delivery_state import DeliveryState
from bot.host import host_of
from spooky.contract import Requester


class Origin(TypedDict):
    """The JobRequest fields that belong to the interaction, not to what was asked for."""

    requester: Requester
    idempotency_key: str  # the interaction id: a retried submit returns the same job
    client: dict[str, str]  # the DeliveryState that finds the job's messages again


def server_install(interaction: discord.Interaction) -> bool:
    """Whether the interaction comes from a server that installed the app (Discord names that
    server as the guild install's authorizing owner)."""
    return interaction.guild_id is not None and interaction.is_guild_integration()


def server_of(interaction: discord.Interaction) -> str | None:
    """The server whose limits apply: the interaction's, if it installed the app; else None (the
    engine's defaults, per member)."""
    return str(interaction.guild_id) if server_install(interaction) else None


def may_post_in_channel(interaction: discord.Interaction) -> bool:
    """Whether the bot may post its own messages (results carry files) in the interaction's channel."""
    perms = interaction.app_permissions
    return server_install(interaction) and perms.view_channel and perms.send_messages and perms.attach_files


def is_moderator(interaction: discord.Interaction) -> bool:
    """Manage Server in a server that installed the app, from the member permissions Discord sent
    with the interaction (elsewhere there are no moderators)."""
    return server_install(interaction) and interaction.permissions.manage_guild


def upload_limit(interaction: discord.Interaction) -> int:
    """Largest attachment this interaction's destination accepts."""
    limit = getattr(interaction, "filesize_limit", None)
    if not limit and interaction.guild is not None:
        limit = interaction.guild.filesize_limit
    return int(limit or host_of(interaction).config.upload_limit_bytes)


def requester(interaction: discord.Interaction) -> Requester:
    return Requester(
        user_id=str(interaction.user.id),
        channel_id=str(interaction.channel_id),
        guild_id=server_of(interaction),
        user_name=str(interaction.user)[:100],
        is_moderator=is_moderator(interaction),
    )


def delivery_state(interaction: discord.Interaction) -> DeliveryState:
    """Where the job's message is: this interaction's response, in its channel (its real server
    too, installed or not), and where it goes once the token is spent."""
    original_id = interaction.extras.get("original_id")
    return DeliveryState(
        app_id=str(interaction.application_id),
        token=interaction.token,
        interaction_at=interaction.created_at.timestamp(),
        channel_id=str(interaction.channel_id),
        guild_id=str(interaction.guild_id) if interaction.guild_id is not None else None,
        message_id=str(original_id) if original_id else None,
        max_bytes=upload_limit(interaction),
        fallback="channel" if may_post_in_channel(interaction) else "dm",
        user_id=str(interaction.user.id),
    )


def origin(interaction: discord.Interaction) -> Origin:
    return Origin(
        requester=requester(interaction),
        idempotency_key=str(interaction.id),
        client=delivery_state(interaction).to_client(),
    )
