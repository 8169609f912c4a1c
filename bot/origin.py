"""Where an interaction comes from: who asked, with which rights, what its destination accepts.

The fields of a job request that say so (`Origin`) are built here once, for a new job and for a
button that submits one again alike.
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


def is_moderator(interaction: discord.Interaction) -> bool:
    """Manage Server, from the member permissions Discord sent with the interaction."""
    return interaction.guild_id is not None and interaction.permissions.manage_guild


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
        guild_id=str(interaction.guild_id) if interaction.guild_id else None,
        user_name=str(interaction.user)[:100],
        is_moderator=is_moderator(interaction),
    )


def delivery_state(interaction: discord.Interaction) -> DeliveryState:
    """Where the job's message is: this interaction's response, in its channel."""
    original_id = interaction.extras.get("original_id")
    return DeliveryState(
        app_id=str(interaction.application_id),
        token=interaction.token,
        interaction_at=interaction.created_at.timestamp(),
        channel_id=str(interaction.channel_id),
        guild_id=str(interaction.guild_id) if interaction.guild_id is not None else None,
        message_id=str(original_id) if original_id else None,
        max_bytes=upload_limit(interaction),
    )


def origin(interaction: discord.Interaction) -> Origin:
    return Origin(
        requester=requester(interaction),
        idempotency_key=str(interaction.id),
        client=delivery_state(interaction).to_client(),
    )
