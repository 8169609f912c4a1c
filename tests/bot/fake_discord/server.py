"""The fake Discord a test starts: its REST API and gateway on 127.0.0.1, and what tests call.

Tests read its state (`messages`, `files`, `requests`, `commands`, the ids of its server, channels
and members) and act through it: send a slash command or a button press, inject a fault, hold an
answer, expire a token, add a server on another shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from fake_discord import interactions
from fake_discord.faults import Faults
from fake_discord.gateway import Gateway
from fake_discord.rest import Rest
from fake_discord.state import API_PREFIX, PERM_ALL_MEMBER, DiscordState, Interaction, User

#: The upload limit Discord announces in a server without boosts.
DEFAULT_ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024


class FakeDiscord(DiscordState):
    """Discord's REST API and gateway on 127.0.0.1, one application, one guild by default."""

    def __init__(self, **state: Any) -> None:
        super().__init__(**state)
        self.faults = Faults()
        self.inject = self.faults.inject  # fail or drop the next matching requests
        self.hold = self.faults.hold  # act on the next matching request, answer when released
        self.rest = Rest(self, self.faults)
        self.gateway = Gateway(self)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self.gateway.handler)
        app.router.add_get("/cdn/{att_id}/{filename}", self.rest.cdn)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self.rest.api)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self.faults.release_all()
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- the gateway ---------------------------------------------------------------------------

    @property
    def ready_sent(self) -> int:
        """READY frames sent (one per bot session)."""
        return self.gateway.ready_sent

    @property
    def sessions_used(self) -> list[tuple[int, int]]:
        """The (shard, count) each interaction went to."""
        return self.gateway.sessions_used

    @property
    def identified(self) -> asyncio.Event:
        return self.gateway.identified

    async def drop_gateway(self) -> None:
        """Close every gateway connection (the bot reconnects)."""
        await self.gateway.drop()

    # --- interactions ----------------------------------------------------------------------------

    async def invoke(
        self,
        command: str,
        options: dict[str, Any] | None = None,
        *,
        user: User | None = None,
        channel_id: str | None = None,
        permissions: int = PERM_ALL_MEMBER,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT,
    ) -> Interaction:
        """Send a slash command ("spooky" or "limits set") typed by the synced definition."""
        channel_id = channel_id or self.channel_ids[0]
        data = interactions.command_data(self, command, options or {}, guild_id=self.guild_of(channel_id))
        return await self._send(
            interactions.APPLICATION_COMMAND, data, user, channel_id, permissions, attachment_size_limit
        )

    async def click(
        self,
        message_id: str,
        custom_id: str,
        *,
        user: User | None = None,
        permissions: int = PERM_ALL_MEMBER,
    ) -> Interaction:
        """Press a button on a message the bot posted."""
        message = self.messages[message_id]
        data = interactions.button_data(message, custom_id)
        return await self._send(
            interactions.MESSAGE_COMPONENT,
            data,
            user,
            message["channel_id"],
            permissions,
            DEFAULT_ATTACHMENT_SIZE_LIMIT,
            message=message,
        )

    async def _send(
        self,
        kind: int,
        data: dict[str, Any],
        user: User | None,
        channel_id: str,
        permissions: int,
        size_limit: int,
        message: dict[str, Any] | None = None,
    ) -> Interaction:
        guild_id = self.guild_of(channel_id)
        assert guild_id is not None, f"no guild has channel {channel_id}"
        session = self.gateway.session_for(guild_id)
        inter = interactions.create(
            self,
            kind,
            data,
            user=user or self.member,
            channel_id=channel_id,
            permissions=permissions,
            size_limit=size_limit,
            message=message,
        )
        inter.sent_at = time.monotonic()
        await self.gateway.send(session, "INTERACTION_CREATE", inter.payload)
        return inter

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Wait until predicate() is truthy (checked after every request and every 50 ms)."""
        async with asyncio.timeout(timeout):
            while not (result := predicate()):
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.05)
            return result
