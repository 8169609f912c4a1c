"""A local Discord-compatible API for tests: REST + gateway, just what the bot uses.

The real discord.py client talks to it over HTTP and a websocket, as it would to Discord. It keeps
messages (with their attachments' bytes), records every request for assertions, sends
INTERACTION_CREATE on demand, and can inject faults: 5xx, dropped connections, 413/40005 above an
upload size, and interaction tokens that expire (401/50027) after a configurable lifetime. It
shards like Discord: a session's IDENTIFY names its shard, it is told of the servers on that
shard only, and a server's interactions arrive on the session of its shard. Like
Discord, a channel post with `enforce_nonce` and a nonce seen in the last `nonce_window_s` returns
the message first created with it instead of a new one. A `hold` keeps a request's answer back
(after the fake has acted on it) until the test releases it, to kill a bot at that moment.

Payload shapes follow the Discord API v10 documentation and what discord.py 2.x reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

API_PREFIX = "/api/v10"
JSON = "application/json"  # exactly: discord.py compares the header without parameters

# Discord's option types (application command option type enum).
OPT_SUB_COMMAND, OPT_SUB_GROUP, OPT_STRING, OPT_INTEGER, OPT_BOOLEAN = 1, 2, 3, 4, 5
OPT_USER, OPT_CHANNEL, OPT_ROLE, OPT_MENTIONABLE, OPT_NUMBER, OPT_ATTACHMENT = 6, 7, 8, 9, 10, 11

# Permission bits the tests use.
PERM_ALL_MEMBER = (
    (1 << 10) | (1 << 11) | (1 << 15) | (1 << 16) | (1 << 31)
)  # view, send, attach, history, use cmds
PERM_MANAGE_GUILD = 1 << 5

EPHEMERAL, LOADING = 1 << 6, 1 << 7
DISCORD_EPOCH_MS = 1420070400000


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), headers={"Content-Type": JSON})


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"message": message, "code": code}, status)


@dataclass
class Recorded:
    """One HTTP request the bot made."""

    method: str
    path: str  # without the /api/v10 prefix
    query: dict[str, str]
    json: dict[str, Any] | list[Any] | None
    files: list[tuple[str, bytes]]  # (filename, content)
    at: float  # time.monotonic()
    status: int = 0  # what the fake answered

    @property
    def upload_bytes(self) -> int:
        return sum(len(b) for _, b in self.files)


@dataclass
class Fault:
    """Answer matching requests with `status` (or drop the connection) `times` times."""

    method: str | None
    path_re: re.Pattern[str]
    status: int = 503
    times: int = 1
    drop: bool = False
    code: int = 0
    filename: str | None = None  # only requests uploading a file of this name

    def matches(self, rec: Recorded) -> bool:
        return (
            self.times > 0
            and self.method in (None, rec.method)
            and bool(self.path_re.search(rec.path))
            and (self.filename is None or any(name == self.filename for name, _ in rec.files))
        )


@dataclass
class Hold:
    """A matching request is acted on, then its answer waits for `released` (see FakeDiscord.hold)."""

    method: str | None
    path_re: re.Pattern[str]
    filename: str | None = None  # only requests uploading a file of this name
    record: Recorded | None = None
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, rec: Recorded) -> bool:
        return (
            self.record is None
            and 200 <= rec.status < 300
            and self.method in (None, rec.method)
            and bool(self.path_re.search(rec.path))
            and (self.filename is None or any(name == self.filename for name, _ in rec.files))
        )

    def release(self) -> None:
        self.released.set()


@dataclass
class User:
    id: str
    username: str
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "global_name": self.username,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass
class Interaction:
    """An INTERACTION_CREATE the fake sent, and what the bot answered."""

    id: str
    token: str
    type: int
    payload: dict[str, Any]
    sent_at: float  # monotonic time the gateway frame was written
    created_at: float  # the fake's (possibly scaled) clock: the token's birth
    acked_at: float | None = None
    callback_type: int | None = None
    callback: dict[str, Any] | None = None
    original_id: str | None = None  # the response message
    expired: bool = False  # the test spent the token early (see FakeDiscord.expire)
    acked: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ack_latency(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.sent_at


class FakeDiscord:
    """Discord's REST API and gateway on 127.0.0.1, one application, one guild by default."""

    def __init__(
        self,
        *,
        token_lifetime_s: float = 900.0,
        ack_deadline_s: float | None = 3.0,
        upload_limit_bytes: int | None = None,
        bot_token: str = "fake-bot-token",
    ) -> None:
        self._seq = itertools.count()
        self.bot_token = bot_token
        self.token_lifetime_s = token_lifetime_s
        self.ack_deadline_s = ack_deadline_s
        self.upload_limit_bytes = upload_limit_bytes
        self.nonce_window_s = 300.0  # Discord: "a few minutes"
        self._nonces: dict[tuple[str, str], tuple[str, float]] = {}  # (channel, nonce) -> (message, at)
        self.holds: list[Hold] = []
        self.app_id = self.snowflake()
        self.bot_user = User(self.app_id, "SpookyBot", bot=True)
        self.owner = User(self.snowflake(), "operator")
        self.guild_id = self.snowflake()
        self.channel_ids = [self.snowflake(), self.snowflake()]
        self.guild_channels: dict[str, list[str]] = {self.guild_id: self.channel_ids}
        self.recommended_shards = 1  # what GET /gateway/bot tells a bot that lets Discord decide
        self.moderator = User(self.snowflake(), "mod")
        self.member = User(self.snowflake(), "alice")
        self.other = User(self.snowflake(), "bob")
        self.moderator_role = self.snowflake()
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.messages: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}  # attachment id -> bytes
        self.downloads: list[str] = []  # attachment ids fetched from the CDN, in order
        self.interactions: dict[str, Interaction] = {}
        self.commands: dict[str, dict[str, Any]] = {}  # synced global commands by name
        self.identified = asyncio.Event()
        self.ready_sent = 0  # READY frames sent (one per bot session)
        self.sessions_used: list[tuple[int, int]] = []  # the (shard, count) each interaction went to
        # Gateway sessions: (socket, sequence, (shard id, shard count)).
        self._ws: list[tuple[web.WebSocketResponse, list[int], tuple[int, int]]] = []
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def snowflake(self) -> str:
        """A Discord id: milliseconds since the Discord epoch, then a counter (ids carry their time)."""
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((ms << 22) | (next(self._seq) & 0x3FFFFF))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._ws_handler)
        app.router.add_get("/cdn/{att_id}/{filename}", self._cdn)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._api)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for held in self.holds:
            held.release()
        for ws, *_ in list(self._ws):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- what tests call ---------------------------------------------------------------------

    def inject(
        self,
        path_re: str,
        *,
        method: str | None = None,
        status: int = 503,
        times: int = 1,
        drop: bool = False,
        code: int = 0,
        filename: str | None = None,
    ) -> Fault:
        """Fail the next `times` matching requests with `status` (or a dropped connection)."""
        fault = Fault(method, re.compile(path_re), status, times, drop, code, filename)
        self.faults.append(fault)
        return fault

    def hold(self, path_re: str, *, method: str | None = None, filename: str | None = None) -> Hold:
        """Act on the next matching request that succeeds, but keep its answer back until
        `release()` (the fake's stop releases every hold)."""
        held = Hold(method, re.compile(path_re), filename)
        self.holds.append(held)
        return held

    def add_guild(self, *, shard: int, shard_count: int) -> str:
        """Another server, whose id falls on `shard` of `shard_count`; returns its channel's id."""
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        ms += (shard - ms) % shard_count  # (id >> 22) is the millisecond part: pick one on the shard
        guild_id = str((ms << 22) | (next(self._seq) & 0x3FFFFF))
        channel_id = self.snowflake()
        self.guild_channels[guild_id] = [channel_id]
        return channel_id

    def guild_of(self, channel_id: str) -> str | None:
        return next((g for g, channels in self.guild_channels.items() if channel_id in channels), None)

    @staticmethod
    def shard_of(guild_id: str, shard_count: int) -> int:
        return (int(guild_id) >> 22) % shard_count

    def expire(self, inter: Interaction) -> None:
        """Make Discord refuse this interaction's token from now on (401/50027), as if it had expired."""
        inter.expired = True

    def add_attachment(
        self, filename: str, content_type: str, data: bytes, *, size: int | None = None
    ) -> dict[str, Any]:
        """Host a file and return the attachment object an interaction's `resolved` carries
        (`size` overrides the announced size, to announce a large file without hosting one)."""
        att_id = self.snowflake()
        self.files[att_id] = data
        return {
            "id": att_id,
            "filename": filename,
            "size": len(data) if size is None else size,
            "url": f"{self.base_url}/cdn/{att_id}/{filename}",
            "proxy_url": f"{self.base_url}/cdn/{att_id}/{filename}",
            "content_type": content_type,
        }

    async def invoke(
        self,
        command: str,
        options: dict[str, Any] | None = None,
        *,
        user: User | None = None,
        channel_id: str | None = None,
        permissions: int = PERM_ALL_MEMBER,
        attachment_size_limit: int = 10 * 1024 * 1024,
    ) -> Interaction:
        """Send a slash command ("spooky" or "limits set") typed by the synced definition."""
        names = command.split()
        definition = self.commands.get(names[0])
        if definition is None:
            raise AssertionError(f"command {names[0]!r} was not synced; synced: {sorted(self.commands)}")
        resolved: dict[str, dict[str, Any]] = {}
        opts = self._options(definition, names[1:], options or {}, resolved)
        data: dict[str, Any] = {
            "id": definition["id"],
            "name": names[0],
            "type": 1,
            "options": opts,
            "guild_id": self.guild_of(channel_id or self.channel_ids[0]),
        }
        if resolved:
            data["resolved"] = resolved
        return await self._send_interaction(2, data, user, channel_id, permissions, attachment_size_limit)

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
        ids = [c.get("custom_id") for row in message.get("components", []) for c in row.get("components", [])]
        if custom_id not in ids:
            raise AssertionError(f"no button {custom_id!r} on message {message_id}; buttons: {ids}")
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._send_interaction(
            3, data, user, message["channel_id"], permissions, 10 * 1024 * 1024, message=message
        )

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Wait until predicate() is truthy (checked after every request and every 50 ms)."""
        async with asyncio.timeout(timeout):
            while not (result := predicate()):
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)
            return result

    async def drop_gateway(self) -> None:
        """Close every gateway connection (the bot reconnects)."""
        for ws, *_ in list(self._ws):
            await ws.close(code=4000)

    def requests_for(self, token: str) -> list[Recorded]:
        """Requests that used an interaction token (callbacks, follow-ups, edits)."""
        return [r for r in self.requests if token in r.path]

    def message_payloads(self) -> list[dict[str, Any]]:
        """Every message body the bot sent (JSON or payload_json), for content checks."""
        out = []
        for r in self.requests:
            if r.method in ("POST", "PATCH") and isinstance(r.json, dict):
                body = r.json.get("data", r.json) if "/callback" in r.path else r.json
                if isinstance(body, dict) and ("content" in body or "attachments" in body):
                    out.append(body)
        return out

    # --- gateway -----------------------------------------------------------------------------

    async def _ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seq = [0]
        entry: tuple[web.WebSocketResponse, list[int], tuple[int, int]] = (ws, seq, (0, 1))
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}))
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                op = frame.get("op")
                if op == 1:
                    # A little later, as over a network: discord.py's heartbeat thread notes the send
                    # time only after the send returns, and an instant ACK reads as a huge latency.
                    ack = asyncio.create_task(self._ack_later(ws))
                    self._tasks.add(ack)
                    ack.add_done_callback(self._tasks.discard)
                elif op == 2:
                    if frame["d"].get("token") != self.bot_token:
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    shard_id, shard_count = frame["d"].get("shard") or (0, 1)
                    entry = (ws, seq, (int(shard_id), int(shard_count)))
                    self._ws.append(entry)
                    guilds = [g for g in self.guild_channels if self.shard_of(g, shard_count) == shard_id]
                    await self._dispatch(ws, seq, "READY", self._ready_payload(guilds, entry[2]))
                    for guild_id in guilds:
                        await self._dispatch(ws, seq, "GUILD_CREATE", self._guild_payload(guild_id))
                    self.ready_sent += 1
                    self.identified.set()
                elif op == 6:
                    self._ws.append(entry)
                    await self._dispatch(ws, seq, "RESUMED", {})
        finally:
            if entry in self._ws:
                self._ws.remove(entry)
            if not self._ws:
                self.identified.clear()
        return ws

    async def _ack_later(self, ws: web.WebSocketResponse) -> None:
        await asyncio.sleep(0.05)
        if not ws.closed:
            await ws.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))

    async def _dispatch(self, ws: web.WebSocketResponse, seq: list[int], event: str, data: Any) -> None:
        seq[0] += 1
        await ws.send_str(json.dumps({"op": 0, "s": seq[0], "t": event, "d": data}))

    def _ready_payload(self, guilds: list[str], shard: tuple[int, int]) -> dict[str, Any]:
        return {
            "v": 10,
            "user": self.bot_user.payload() | {"verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": g, "unavailable": True} for g in guilds],
            "session_id": secrets.token_hex(8),
            "resume_gateway_url": self.gateway_url,
            "application": {"id": self.app_id, "flags": 0},
            "shard": list(shard),
        }

    def _member_payload(self, user: User, permissions: int | None = None) -> dict[str, Any]:
        roles = [self.moderator_role] if user is self.moderator else []
        out: dict[str, Any] = {
            "user": user.payload(),
            "roles": roles,
            "joined_at": _now_iso(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "avatar": None,
        }
        if permissions is not None:
            out["permissions"] = str(permissions)
        return out

    def _channel_payload(self, channel_id: str) -> dict[str, Any]:
        guild_id = self.guild_of(channel_id) or self.guild_id
        channels = self.guild_channels[guild_id]
        return {
            "id": channel_id,
            "type": 0,
            "guild_id": guild_id,
            "name": f"spooky-{channels.index(channel_id)}",
            "position": channels.index(channel_id),
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }

    def _guild_payload(self, guild_id: str) -> dict[str, Any]:
        everyone = {
            "id": guild_id,
            "name": "@everyone",
            "permissions": str(PERM_ALL_MEMBER),
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        moderators = everyone | {
            "id": self.moderator_role,
            "name": "moderators",
            "permissions": str(PERM_ALL_MEMBER | PERM_MANAGE_GUILD),
            "position": 1,
        }
        return {
            "id": guild_id,
            "name": "Haunted House",
            "icon": None,
            "owner_id": self.owner.id,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "features": [],
            "roles": [everyone, moderators],
            "emojis": [],
            "stickers": [],
            "channels": [self._channel_payload(c) for c in self.guild_channels[guild_id]],
            "threads": [],
            "members": [self._member_payload(self.bot_user)],
            "member_count": 4,
            "large": False,
            "unavailable": False,
            "joined_at": _now_iso(),
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "splash": None,
            "discovery_splash": None,
            "max_members": 1000,
            "application_id": None,
        }

    def _options(
        self,
        definition: dict[str, Any],
        path: list[str],
        values: dict[str, Any],
        resolved: dict[str, dict[str, Any]],
    ) -> list[dict[str, Any]]:
        options = definition.get("options", [])
        if path:
            sub = next((o for o in options if o["name"] == path[0]), None)
            if sub is None:
                raise AssertionError(f"no sub-command {path[0]!r} in {definition['name']!r}")
            return [
                {
                    "name": sub["name"],
                    "type": sub["type"],
                    "options": self._options(sub, path[1:], values, resolved),
                }
            ]
        out = []
        by_name = {o["name"]: o for o in options}
        for name, value in values.items():
            if name not in by_name:
                raise AssertionError(
                    f"no option {name!r} in {definition['name']!r}; options: {sorted(by_name)}"
                )
            kind = by_name[name]["type"]
            if kind == OPT_ATTACHMENT:
                resolved.setdefault("attachments", {})[value["id"]] = value
                value = value["id"]
            elif kind == OPT_CHANNEL:
                resolved.setdefault("channels", {})[str(value)] = self._channel_payload(str(value)) | {
                    "permissions": str(PERM_ALL_MEMBER)
                }
                value = str(value)
            out.append({"name": name, "type": kind, "value": value})
        return out

    async def _send_interaction(
        self,
        kind: int,
        data: dict[str, Any],
        user: User | None,
        channel_id: str | None,
        permissions: int,
        size_limit: int,
        message: dict[str, Any] | None = None,
    ) -> Interaction:
        if not self._ws:
            raise AssertionError("no bot is connected to the gateway")
        user = user or self.member
        channel_id = channel_id or self.channel_ids[0]
        guild_id = self.guild_of(channel_id)
        assert guild_id is not None, f"no guild has channel {channel_id}"
        inter_id = self.snowflake()
        token = "tok_" + secrets.token_urlsafe(24)
        payload: dict[str, Any] = {
            "id": inter_id,
            "application_id": self.app_id,
            "type": kind,
            "data": data,
            "guild_id": guild_id,
            "guild": {"id": guild_id, "locale": "en-US", "features": []},
            "channel_id": channel_id,
            "channel": self._channel_payload(channel_id),
            "member": self._member_payload(user, permissions),
            "token": token,
            "version": 1,
            "app_permissions": str(PERM_ALL_MEMBER),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": guild_id},
            "context": 0,
            "attachment_size_limit": size_limit,
        }
        if message is not None:
            payload["message"] = message
        inter = Interaction(inter_id, token, kind, payload, 0.0, time.monotonic())
        self.interactions[inter_id] = inter
        # Discord sends a server's events on the session of the shard that server falls on.
        on_shard = [e for e in self._ws if self.shard_of(guild_id, e[2][1]) == e[2][0]]
        if not on_shard:
            raise AssertionError(f"no bot session runs the shard of guild {guild_id}")
        ws, seq, _ = on_shard[-1]
        self.sessions_used.append(on_shard[-1][2])
        inter.sent_at = time.monotonic()
        await self._dispatch(ws, seq, "INTERACTION_CREATE", payload)
        return inter

    # --- REST --------------------------------------------------------------------------------

    async def _cdn(self, request: web.Request) -> web.Response:
        self.downloads.append(request.match_info["att_id"])
        data = self.files.get(request.match_info["att_id"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, headers={"Content-Type": "application/octet-stream"})

    async def _read_body(self, request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
        files: list[tuple[str, bytes]] = []
        body: Any = None
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":  # type: ignore[union-attr]
                    body = json.loads(await part.text())  # type: ignore[union-attr]
                else:
                    files.append((part.filename or "file", bytes(await part.read())))  # type: ignore[union-attr]
        elif request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        return body, files

    async def _api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body, files = await self._read_body(request)
        rec = Recorded(request.method, path, dict(request.query), body, files, time.monotonic())
        self.requests.append(rec)
        try:
            response = await self._route(request, rec)
        except _Dropped:
            rec.status = -1
            self._changed.set()
            raise
        rec.status = response.status
        self._changed.set()
        if held := next((h for h in self.holds if h.matches(rec)), None):
            held.record = rec
            held.reached.set()
            await held.released.wait()
        return response

    async def _route(self, request: web.Request, rec: Recorded) -> web.StreamResponse:
        method, path = rec.method, rec.path
        for fault in self.faults:
            if fault.matches(rec):
                fault.times -= 1
                if fault.drop:
                    assert request.transport is not None
                    request.transport.close()
                    raise _Dropped
                return _error(fault.status, fault.code, f"injected {fault.status}")
        if self.upload_limit_bytes is not None and rec.upload_bytes > self.upload_limit_bytes:
            return _error(413, 40005, "Request entity too large")

        if m := re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path):
            return self._callback(m[1], m[2], rec)
        if m := re.fullmatch(r"/webhooks/(\d+)/([^/]+)(?:/messages/(@original|\d+))?", path):
            return self._webhook(m[1], m[2], m[3], rec)

        # Everything else is bot-authenticated.
        if request.headers.get("Authorization") != f"Bot {self.bot_token}":
            return _error(401, 0, "401: Unauthorized")
        if path == "/users/@me" and method == "GET":
            return _json(self.bot_user.payload() | {"verified": True, "mfa_enabled": False, "flags": 0})
        if path == "/oauth2/applications/@me" and method == "GET":
            return _json(self._app_payload())
        if path in ("/gateway", "/gateway/bot"):
            return _json(
                {
                    "url": self.gateway_url,
                    "shards": self.recommended_shards,
                    "session_start_limit": {
                        "total": 1000,
                        "remaining": 1000,
                        "reset_after": 0,
                        "max_concurrency": 1,
                    },
                }
            )
        if m := re.fullmatch(r"/applications/(\d+)(?:/guilds/(\d+))?/commands", path):
            return self._sync(m[2], rec)
        if m := re.fullmatch(r"/channels/(\d+)/messages(?:/(\d+))?", path):
            return self._channel_message(m[1], m[2], rec)
        return _error(404, 0, f"404: Not Found ({method} {path})")

    def _app_payload(self) -> dict[str, Any]:
        return {
            "id": self.app_id,
            "name": "SpookyGAN",
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.owner.payload(),
            "verify_key": "00",
            "flags": 0,
            "summary": "",
            "team": None,
            "bot": self.bot_user.payload(),
            "interactions_endpoint_url": None,
        }

    def _sync(self, guild_id: str | None, rec: Recorded) -> web.Response:
        if rec.method == "GET":
            return _json(list(self.commands.values()))
        if rec.method != "PUT" or not isinstance(rec.json, list):
            return _error(405, 0, "405: Method Not Allowed")
        out = []
        for cmd in rec.json:
            cmd = cmd | {"id": self.snowflake(), "application_id": self.app_id, "version": self.snowflake()}
            if guild_id:
                cmd["guild_id"] = guild_id
            out.append(cmd)
        if guild_id is None:
            self.commands = {c["name"]: c for c in out}
        return _json(out)

    # interactions

    def _token_ok(self, inter: Interaction | None) -> bool:
        return (
            inter is not None
            and not inter.expired
            and time.monotonic() - inter.created_at <= self.token_lifetime_s
        )

    def _callback(self, inter_id: str, token: str, rec: Recorded) -> web.Response:
        inter = self.interactions.get(inter_id)
        if inter is None or inter.token != token:
            return _error(404, 10062, "Unknown interaction")
        if inter.acked_at is not None:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        if self.ack_deadline_s is not None and rec.at - inter.sent_at > self.ack_deadline_s:
            return _error(404, 10062, "Unknown interaction")
        body = rec.json if isinstance(rec.json, dict) else {}
        kind = body.get("type")
        data = body.get("data") or {}
        inter.acked_at, inter.callback_type, inter.callback = rec.at, kind, body
        inter.acked.set()
        channel_id = inter.payload["channel_id"]
        message = None
        if kind in (4, 5):
            flags = int(data.get("flags", 0)) & EPHEMERAL
            if kind == 5:
                message = self._new_message(channel_id, {"content": "", "flags": flags | LOADING}, [], inter)
            else:
                message = self._new_message(channel_id, data | {"flags": flags}, rec.files, inter)
            inter.original_id = message["id"]
        elif kind == 7 and inter.payload.get("message"):
            message = self._edit(self.messages[inter.payload["message"]["id"]], data, rec.files)
        if "with_response" not in rec.query:
            return web.Response(status=204)
        out: dict[str, Any] = {"interaction": {"id": inter_id, "type": inter.type}}
        if message is not None:
            out["interaction"] |= {
                "response_message_id": message["id"],
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(message["flags"] & EPHEMERAL),
            }
            out["resource"] = {"type": kind, "message": message}
        return _json(out)

    def _webhook(self, app_id: str, token: str, message_id: str | None, rec: Recorded) -> web.Response:
        inter = next((i for i in self.interactions.values() if i.token == token), None)
        if app_id != self.app_id or not self._token_ok(inter):
            return _error(401, 50027, "Invalid Webhook Token")
        assert inter is not None
        if message_id == "@original":
            message_id = inter.original_id
        if message_id is None:
            if rec.method != "POST":
                return _error(404, 10008, "Unknown Message")
            body = rec.json if isinstance(rec.json, dict) else {}
            original = self.messages.get(inter.original_id or "")
            if original is not None and not original.get("deleted") and original["flags"] & LOADING:
                # Discord: the first follow-up after a deferred response replaces the loading message.
                body = {k: v for k, v in body.items() if k != "flags"} | {
                    "flags": original["flags"] & ~LOADING
                }
                return _json(self._edit(original, body, rec.files))
            return _json(self._new_message(inter.payload["channel_id"], body, rec.files, inter))
        message = self.messages.get(message_id)
        if message is None or message.get("deleted"):
            return _error(404, 10008, "Unknown Message")
        if rec.method == "GET":
            return _json(message)
        if rec.method == "DELETE":
            message["deleted"] = True
            return web.Response(status=204)
        if rec.method == "PATCH":
            return _json(self._edit(message, rec.json or {}, rec.files))
        return _error(405, 0, "405: Method Not Allowed")

    def _channel_message(self, channel_id: str, message_id: str | None, rec: Recorded) -> web.Response:
        if self.guild_of(channel_id) is None:
            return _error(404, 10003, "Unknown Channel")
        if message_id is None:
            if rec.method != "POST":
                return _error(405, 0, "405: Method Not Allowed")
            body = rec.json if isinstance(rec.json, dict) else {}
            nonce = str(body["nonce"]) if body.get("enforce_nonce") and body.get("nonce") else None
            if nonce is not None and (seen := self._nonces.get((channel_id, nonce))):
                message_id, at = seen
                if time.monotonic() - at <= self.nonce_window_s and not self.messages[message_id].get(
                    "deleted"
                ):
                    return _json(self.messages[message_id])
            message = self._new_message(channel_id, body, rec.files, None)
            if nonce is not None:
                self._nonces[(channel_id, nonce)] = (message["id"], time.monotonic())
            return _json(message)
        message = self.messages.get(message_id)
        if message is None or message.get("deleted") or message["channel_id"] != channel_id:
            return _error(404, 10008, "Unknown Message")
        if rec.method == "GET":
            return _json(message)
        if rec.method == "DELETE":
            message["deleted"] = True
            return web.Response(status=204)
        if rec.method == "PATCH":
            if message["flags"] & EPHEMERAL:
                return _error(404, 10008, "Unknown Message")
            return _json(self._edit(message, rec.json or {}, rec.files))
        return _error(405, 0, "405: Method Not Allowed")

    # messages

    def _attachments(
        self, specs: list[dict[str, Any]], files: list[tuple[str, bytes]], old: list[dict]
    ) -> list:
        kept = {a["id"]: a for a in old}
        out = []
        for spec in specs:
            att_id = str(spec.get("id"))
            if att_id in kept:
                out.append(kept[att_id])
                continue
            index = int(spec["id"])
            filename, data = files[index]
            new_id = self.snowflake()
            self.files[new_id] = data
            out.append(
                {
                    "id": new_id,
                    "filename": spec.get("filename", filename),
                    "size": len(data),
                    "url": f"{self.base_url}/cdn/{new_id}/{filename}",
                    "proxy_url": f"{self.base_url}/cdn/{new_id}/{filename}",
                }
            )
        return out

    def _new_message(
        self, channel_id: str, body: dict[str, Any], files: list[tuple[str, bytes]], inter: Interaction | None
    ) -> dict[str, Any]:
        specs = body.get("attachments")
        if specs is None:
            specs = [{"id": i, "filename": f} for i, (f, _) in enumerate(files)]
        message: dict[str, Any] = {
            "id": self.snowflake(),
            "channel_id": channel_id,
            "guild_id": self.guild_of(channel_id),
            "author": self.bot_user.payload(),
            "content": body.get("content") or "",
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": self._attachments(specs, files, []),
            "embeds": body.get("embeds") or [],
            "pinned": False,
            "type": 0 if inter is None else 20,
            "flags": int(body.get("flags") or 0),
            "components": body.get("components") or [],
            "allowed_mentions": body.get("allowed_mentions"),
            "edits": 0,
            "via": "channel" if inter is None else "interaction",
        }
        if inter is not None:
            message["webhook_id"] = self.app_id
            message["application_id"] = self.app_id
            message["interaction_id"] = inter.id
        self.messages[message["id"]] = message
        return message

    def _edit(self, message: dict[str, Any], body: dict[str, Any], files: list[tuple[str, bytes]]) -> dict:
        for key in ("content", "components", "embeds"):
            if key in body:
                message[key] = body[key] or ([] if key != "content" else "")
        if "attachments" in body:
            message["attachments"] = self._attachments(
                body["attachments"] or [], files, message["attachments"]
            )
        elif files:
            message["attachments"] = message["attachments"] + self._attachments(
                [{"id": i, "filename": f} for i, (f, _) in enumerate(files)], files, []
            )
        if "flags" in body:
            message["flags"] = int(body["flags"] or 0) | (message["flags"] & EPHEMERAL)
        message["flags"] &= ~LOADING
        message["allowed_mentions"] = body.get("allowed_mentions", message.get("allowed_mentions"))
        message["edited_timestamp"] = _now_iso()
        message["edits"] += 1
        return message


class _Dropped(Exception):
    """The fake closed the connection without answering."""
