"""What the fake Discord knows and stores: ids, users, servers and channels, messages with their
attachments' bytes, interactions, synced commands, and every request the bot made.

Numbers here are Discord's own (API v10 documentation): snowflakes carry their creation time,
message flags and permission bits are the documented ones.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

API_PREFIX = "/api/v10"

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


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


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
    expired: bool = False  # the test spent the token early (see DiscordState.expire)
    acked: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ack_latency(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.sent_at


class DiscordState:
    """One application, its bot user, one server with two channels by default, and three members."""

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
        self.nonces: dict[tuple[str, str], tuple[str, float]] = {}  # (channel, nonce) -> (message, at)
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
        self.messages: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}  # attachment id -> bytes
        self.downloads: list[str] = []  # attachment ids fetched from the CDN, in order
        self.interactions: dict[str, Interaction] = {}
        self.commands: dict[str, dict[str, Any]] = {}  # synced global commands by name
        self.changed = asyncio.Event()  # set after every request the fake answered
        self.port = 0

    # --- ids and addresses -------------------------------------------------------------------

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

    # --- servers and channels ------------------------------------------------------------------

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

    # --- interactions ----------------------------------------------------------------------------

    def expire(self, inter: Interaction) -> None:
        """Make Discord refuse this interaction's token from now on (401/50027), as if it had expired."""
        inter.expired = True

    def token_ok(self, inter: Interaction | None) -> bool:
        return (
            inter is not None
            and not inter.expired
            and time.monotonic() - inter.created_at <= self.token_lifetime_s
        )

    # --- attachments and messages --------------------------------------------------------------

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

    def attachments(
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

    def new_message(
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
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": self.attachments(specs, files, []),
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

    def edit(self, message: dict[str, Any], body: dict[str, Any], files: list[tuple[str, bytes]]) -> dict:
        for key in ("content", "components", "embeds"):
            if key in body:
                message[key] = body[key] or ([] if key != "content" else "")
        if "attachments" in body:
            message["attachments"] = self.attachments(
                body["attachments"] or [], files, message["attachments"]
            )
        elif files:
            message["attachments"] = message["attachments"] + self.attachments(
                [{"id": i, "filename": f} for i, (f, _) in enumerate(files)], files, []
            )
        if "flags" in body:
            message["flags"] = int(body["flags"] or 0) | (message["flags"] & EPHEMERAL)
        message["flags"] &= ~LOADING
        message["allowed_mentions"] = body.get("allowed_mentions", message.get("allowed_mentions"))
        message["edited_timestamp"] = now_iso()
        message["edits"] += 1
        return message

    # --- what the bot asked ----------------------------------------------------------------------

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
