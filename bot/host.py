"""What the interaction helpers and buttons need of the running bot, as a checked protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import discord

if TYPE_CHECKING:
    from bot.metrics import BotMetrics
    from bot.tracker import Tracker
    from spooky.config import BotConfig, Settings
    from spooky.engine_client import EngineClient


@runtime_checkable
class BotHost(Protocol):
    """The parts of SpookyBot a helper may use (SpookyBot satisfies it)."""

    settings: Settings
    config: BotConfig
    engine: EngineClient
    metrics: BotMetrics
    tracker: Tracker


def host_of(interaction: discord.Interaction) -> BotHost:
    """The bot that received `interaction`; a plain discord.Client here is a wiring mistake."""
    client = interaction.client
    if not isinstance(client, BotHost):
        raise TypeError(f"interaction {interaction.id} reached {type(client).__name__}, not the Spooky bot")
    return client
