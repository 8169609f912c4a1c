"""What the parts of the bot use of the running bot, as narrow protocols (SpookyBot satisfies both).

Commands, buttons and job actions reach the bot through the interaction (`host_of`); the tracker
and the job messages are handed it. Neither needs the whole `SpookyBot`, so neither imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import discord

if TYPE_CHECKING:
    from bot.metrics import BotMetrics
    from spooky.config import BotConfig, Settings
    from spooky.contract import JobView
    from spooky.engine_client import EngineClient


class JobWatcher(Protocol):
    """Whatever shows a submitted job's progress and result (the tracker)."""

    async def watch(self, job: JobView) -> None: ...

    async def resume(self, job: JobView) -> None:
        """Deliver again a job whose delivery had ended (its result waited for its member)."""
        ...


@runtime_checkable
class BotHost(Protocol):
    """The parts of the bot a command, a button or a job action may use."""

    settings: Settings
    config: BotConfig
    engine: EngineClient
    metrics: BotMetrics

    @property
    def tracker(self) -> JobWatcher: ...


class DeliveryHost(Protocol):
    """The parts of the bot that following jobs and posting their messages use."""

    engine: EngineClient
    config: BotConfig

    @property
    def application_id(self) -> int | None: ...

    def get_partial_messageable(
        self, id: int, *, guild_id: int | None = None, type: discord.ChannelType | None = None
    ) -> discord.PartialMessageable: ...

    def interaction_webhook(self, application_id: int, token: str) -> discord.Webhook:
        """The webhook of an interaction token, bound to the bot's connection state."""
        ...

    async def create_dm(self, user: discord.abc.Snowflake) -> discord.DMChannel:
        """The bot's DM channel with a member (POST /users/@me/channels)."""
        ...


def host_of(interaction: discord.Interaction) -> BotHost:
    """The bot that received `interaction`; a plain discord.Client here is a wiring mistake."""
    client = interaction.client
    if not isinstance(client, BotHost):
        raise TypeError(f"interaction {interaction.id} reached {type(client).__name__}, not the Spooky bot")
    return client
