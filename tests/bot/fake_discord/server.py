"""The fake Discord a test starts: its REST API and gateway on 127.0.0.1, and what tests call.

Tests read its state (`messages`, `files`, `requests`, `commands` and `menus`, the ids of its
server, channels and members) and act through it: send a slash command, its autocomplete, a message
command, a button press or a form's submit; post a member's message; add places the bot is not in
(a server that never invited it, a group DM), install the app for a member, close a member's DMs;
inject a fault, hold an answer, expire a token, add a server on another shard.
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
from fake_discord.state import (
    API_PREFIX,
    CHAT_INPUT,
    EPHEMERAL,
    GUILD_INSTALL,
    MESSAGE_COMMAND,
    PERM_ALL_MEMBER,
    USER_INSTALL,
    DiscordState,
    Interaction,
    Place,
    User,
)

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
        app.router.add_get("/media/{att_id}/{filename}", self.rest.cdn)  # the media proxy
        app.router.add_get("/elsewhere/{att_id}/{filename}", self.rest.elsewhere)  # a link's own site
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
        """Send a slash command ("spooky" or "limits set") typed by the synced definition, in a
        channel where Discord offers it to `user` (default: the member, in the first channel)."""
        user = user or self.member
        place = self.place_of(channel_id or self.channel_ids[0])
        definition = interactions.synced(self, command.split()[0], CHAT_INPUT)
        authorizing = interactions.available(self, definition, place, user)
        data = interactions.command_data(self, command, options or {}, guild_id=definition.get("guild_id"))
        kind = interactions.APPLICATION_COMMAND
        return await self._send(
            kind, data, user, place, authorizing, permissions=permissions, size_limit=attachment_size_limit
        )

    async def autocomplete(
        self,
        command: str,
        options: dict[str, Any],
        focused: str,
        *,
        user: User | None = None,
        channel_id: str | None = None,
    ) -> Interaction:
        """The member typing `options[focused]` into a slash command: Discord asks the bot for
        suggestions, which land in the interaction's `choices`."""
        user = user or self.member
        place = self.place_of(channel_id or self.channel_ids[0])
        definition = interactions.synced(self, command.split()[0], CHAT_INPUT)
        authorizing = interactions.available(self, definition, place, user)
        data = interactions.command_data(
            self, command, options, guild_id=definition.get("guild_id"), focused=focused
        )
        return await self._send(interactions.AUTOCOMPLETE, data, user, place, authorizing)

    async def use_on_message(
        self,
        name: str,
        message_id: str,
        *,
        user: User | None = None,
        permissions: int = PERM_ALL_MEMBER,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT,
    ) -> Interaction:
        """Apps > `name` on a message (a message command), in the message's channel."""
        user = user or self.member
        message = self.messages[message_id]
        place = self.place_of(message["channel_id"])
        definition = interactions.synced(self, name, MESSAGE_COMMAND)
        authorizing = interactions.available(self, definition, place, user)
        data = interactions.message_command_data(self, name, message)
        kind = interactions.APPLICATION_COMMAND
        return await self._send(
            kind, data, user, place, authorizing, permissions=permissions, size_limit=attachment_size_limit
        )

    async def submit_form(self, opened: Interaction, values: dict[str, str] | None = None) -> Interaction:
        """The member submits the form (modal) the bot answered `opened` with: its inputs as the
        bot prefilled them, but for `values` (by the inputs' custom ids)."""
        if opened.modal is None:
            raise AssertionError(f"the bot answered interaction {opened.id} with no form")
        payload = opened.payload
        return await self._send(
            interactions.MODAL_SUBMIT,
            interactions.modal_submit_data(opened.modal, values or {}),
            self.user(interactions.user_id_of(payload)),
            self.place_of(payload["channel_id"]),
            dict(payload["authorizing_integration_owners"]),
            permissions=int((payload.get("member") or {}).get("permissions", PERM_ALL_MEMBER)),
            size_limit=payload["attachment_size_limit"],
            message=self.messages.get((payload.get("message") or {}).get("id", "")),
        )

    async def click(
        self,
        message_id: str,
        custom_id: str,
        *,
        user: User | None = None,
        permissions: int = PERM_ALL_MEMBER,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT,
    ) -> Interaction:
        """Press a button on a message the bot posted. Its authorizing installations are those of
        the interaction the message answered; a message the bot posted itself, the place's."""
        user = user or self.member
        message = self.messages[message_id]
        data = interactions.button_data(message, custom_id)
        place = self.place_of(message["channel_id"])
        origin = self.interactions.get(message.get("interaction_id") or "")
        shown_to = interactions.user_id_of(origin.payload) if origin is not None else None
        if message["flags"] & EPHEMERAL and shown_to not in (None, user.id):
            raise AssertionError(f"message {message_id} is ephemeral: only its user sees it")
        if origin is not None:
            authorizing = dict(origin.payload["authorizing_integration_owners"])
        else:
            authorizing = interactions.owners(self, place, user, [GUILD_INSTALL, USER_INSTALL])
        if not authorizing:
            raise AssertionError(f"no installation of the app lets {user.username} use message {message_id}")
        return await self._send(
            interactions.MESSAGE_COMPONENT,
            data,
            user,
            place,
            authorizing,
            permissions=permissions,
            size_limit=attachment_size_limit,
            message=message,
        )

    async def _send(
        self,
        kind: int,
        data: dict[str, Any],
        user: User,
        place: Place,
        authorizing: dict[str, str],
        *,
        permissions: int = PERM_ALL_MEMBER,
        size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT,
        message: dict[str, Any] | None = None,
    ) -> Interaction:
        session = self.gateway.session_for(place.guild_id)
        inter = interactions.create(
            self,
            kind,
            data,
            user=user,
            place=place,
            authorizing=authorizing,
            permissions=permissions,
            size_limit=size_limit,
            message=message,
        )
        inter.sent_at = time.monotonic()
        await self.gateway.send(session, "INTERACTION_CREATE", inter.payload)
        return inter

    # --- what members post -----------------------------------------------------------------------

    def post_message(
        self,
        channel_id: str,
        *,
        author: User | None = None,
        content: str = "",
        attachments: list[dict[str, Any]] | None = None,
        embeds: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A member's message (attachments as `add_attachment` returns them), for a message command
        to target."""
        self.place_of(channel_id)
        return self.store_message(
            channel_id,
            author or self.member,
            content=content,
            attachments=attachments or [],
            embeds=embeds or [],
            via="member",
        )

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Wait until predicate() is truthy (checked after every request and every 50 ms)."""
        async with asyncio.timeout(timeout):
            while not (result := predicate()):
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.05)
            return result
