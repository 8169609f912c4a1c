"""The Discord client: cogs loaded from an explicit list, persistent buttons, the event tracker.

No torch and nothing from `engine/` is imported here: the bot talks to the engine over HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.errors import NotModerator, UserFacingError
from bot.metrics import BotMetrics, MetricsServer
from bot.replies import report_unexpected, tell
from bot.text import NO_PINGS
from bot.tracker import Shards, Tracker
from bot.views import DYNAMIC_ITEMS, JobButtons
from spooky.config import BotConfig, Settings
from spooky.engine_client import EngineClient

log = logging.getLogger(__name__)

DISCORD_API = "https://discord.com/api/v10"

#: Command families, one cog each; loaded in this order by setup_hook.
EXTENSIONS: tuple[str, ...] = (
    "bot.cogs.render",  # /spooky, /nightmare
    "bot.cogs.menus",  # Apps > Spookify, Apps > Nightmare on a message
    "bot.cogs.queue",  # /queue, /cancel
    "bot.cogs.limits",  # /limits show|set
)

#: Where every command is offered unless it says otherwise (/limits does): installed to a server
#: or by a member for themselves, and used in a server, the bot's DMs or a private channel.
EVERYWHERE = app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True)
ANY_INSTALL = app_commands.AppInstallationType(guild=True, user=True)


def point_at(api_base: str, gateway_url: str | None) -> None:
    """Aim discord.py at a Discord-compatible API.

    discord.py keeps both addresses as class attributes (`Route.BASE` for REST, including the
    interaction webhooks; `DiscordWebSocket.DEFAULT_GATEWAY` for a plain Client, which never asks
    `GET /gateway`), so they are process-wide: one bot per process.
    """
    discord.http.Route.BASE = api_base.rstrip("/")
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class SpookyTree(app_commands.CommandTree["SpookyBot"]):
    """The one global error handler: user mistakes are answered, the rest logged with context."""

    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError, /
    ) -> None:
        command = interaction.command
        mistake = UserFacingError | NotModerator | app_commands.CheckFailure | app_commands.TransformerError
        outcome = "user_error" if isinstance(error, mistake) else "error"
        label = command.qualified_name if command is not None else "unknown"
        self.client.metrics.commands.labels(label, outcome).inc()
        if isinstance(error, UserFacingError | NotModerator | app_commands.TransformerError):
            # A per-command handler answers these; answer here only when none did.
            if not interaction.response.is_done() or interaction.extras.get("public_loading"):
                message = error.message if isinstance(error, UserFacingError) else str(error)
                await tell(interaction, message)
            return
        if isinstance(error, app_commands.CheckFailure):
            await tell(interaction, "You cannot use this command here.")
            return
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        name = f"/{command.qualified_name}" if command is not None else "an unknown command"
        await report_unexpected(interaction, original, where=name)


class SpookyBot(commands.AutoShardedBot):
    """Application commands only (slash commands, message menus): no message content, no prefix
    commands. Offered to both installation types in every context (`EVERYWHERE`, `ANY_INSTALL`).

    Sharded as `[bot] shard_count` / `shard_ids` say (unset: Discord's recommended count, all in this
    process); a process that runs some shards only delivers the jobs of those shards' servers.
    """

    def __init__(
        self,
        settings: Settings,
        engine: EngineClient,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.config: BotConfig = settings.bot
        self.engine = engine
        point_at(self.config.api_base, self.config.gateway_url)
        self.metrics = BotMetrics()
        self.metrics_server = (
            MetricsServer(self.metrics, self.config.metrics_host, self.config.metrics_port)
            if self.config.metrics_port
            else None
        )
        super().__init__(
            http_trace=self.metrics.trace_config(),
            command_prefix=commands.when_mentioned,
            help_command=None,
            intents=discord.Intents(guilds=True),
            allowed_mentions=NO_PINGS,
            tree_cls=SpookyTree,
            allowed_contexts=EVERYWHERE,
            allowed_installs=ANY_INSTALL,
            max_messages=None,
            chunk_guilds_at_startup=False,
            shard_count=self.config.shard_count,
            shard_ids=self.config.shard_ids,
        )
        shards = Shards(self.config.shard_count, self.config.shard_ids)
        self.tracker = Tracker(
            self,
            views=JobButtons(),
            shards=shards,
            cursor_path=self.config.data_dir / shards.cursor_name,
            interval_s=self.config.progress_interval_s,
            ttl_s=self.config.interaction_ttl_s,
            clock=clock,
        )
        self.loaded: list[str] = []

    def interaction_webhook(self, application_id: int, token: str) -> discord.Webhook:
        """The webhook of an interaction token, with this client's state (a view needs it)."""
        return discord.Webhook.partial(application_id, token, client=self)

    async def setup_hook(self) -> None:
        for name in EXTENSIONS:
            try:
                await self.load_extension(name)
            except Exception:
                log.exception("failed to load %s; its commands are unavailable", name)
            else:
                self.loaded.append(name)
                log.info("loaded %s", name)
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        if self.metrics_server is not None:
            try:
                await self.metrics_server.start()
            except OSError as e:  # metrics are auxiliary: say so loudly, keep serving Discord
                log.error("bot metrics not served on port %d: %s", self.metrics_server.port, e)
                self.metrics_server = None
        await self._find_gateway()
        if self.config.sync_commands:
            synced = await self.tree.sync()
            log.info("published %d application commands", len(synced))
        await self.tracker.start()

    async def _find_gateway(self) -> None:
        """For a Discord-compatible API without an explicit gateway, ask it where its gateway is."""
        if self.config.gateway_url or self.config.api_base.rstrip("/") == DISCORD_API:
            return
        _, url, _ = await self.http.get_bot_gateway()
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url).with_query(None)
        log.info("gateway of %s is %s", self.config.api_base, url)

    async def on_app_command_completion(
        self, interaction: discord.Interaction, command: app_commands.Command | app_commands.ContextMenu
    ) -> None:
        self.metrics.commands.labels(command.qualified_name, "ok").inc()

    async def close(self) -> None:
        await self.tracker.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await super().close()
