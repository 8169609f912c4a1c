"""What the fake Discord knows and stores: ids, users, servers and channels, messages with their
attachments' bytes, interactions, synced commands, and every request the bot made.

Numbers here are Discord's own (API v10 documentation): snowflakes carry their creation time,
message flags and permission bits are the documented ones.

Besides the server that installed the app (its guild install; the bot user is a member), there
are places the bot user is not in, where only a member who installed the app for themselves (a
user install) can use it: servers that never invited the bot, group DMs and DMs between members.
Each channel has a `Place` saying which it is; the bot's own DM with a member is a place too.
"""

from __future__ import annotations

import asyncio
import itertools
import mimetypes
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

# The app's permissions where the bot user is not a member (Discord's documented `app_permissions`
# in (G)DMs with other users: ATTACH_FILES | EMBED_LINKS | MENTION_EVERYONE); in its own DMs
# USE_EXTERNAL_EMOJIS too. Discord does not document the value in a server without the app's
# install; the fake sends the (G)DM one there, which has neither VIEW_CHANNEL nor SEND_MESSAGES.
PERM_VIEW_CHANNEL, PERM_SEND_MESSAGES, PERM_ATTACH_FILES = 1 << 10, 1 << 11, 1 << 15
PERM_PRIVATE = (1 << 15) | (1 << 14) | (1 << 17)
PERM_BOT_DM = PERM_PRIVATE | (1 << 18)

# Installation contexts (application integration types) and interaction contexts.
GUILD_INSTALL, USER_INSTALL = 0, 1
CONTEXT_GUILD, CONTEXT_BOT_DM, CONTEXT_PRIVATE = 0, 1, 2
# Channel types.
GUILD_TEXT, DM, GROUP_DM = 0, 1, 3
# Application command types.
CHAT_INPUT, USER_COMMAND, MESSAGE_COMMAND = 1, 2, 3

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


@dataclass(frozen=True)
class Place:
    """A channel and what kind of place it is for the app."""

    channel_id: str
    context: int  # CONTEXT_GUILD, CONTEXT_BOT_DM or CONTEXT_PRIVATE
    channel_type: int  # GUILD_TEXT, DM or GROUP_DM
    guild_id: str | None = None
    bot_member: bool = True  # the bot user is in the channel: it may use channel endpoints there
    guild_install: bool = True  # a server that installed the app (or the bot's DM: key "0" is "0")
    recipients: tuple[str, ...] = ()  # a DM's or group DM's members (user ids)


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
    modal: dict[str, Any] | None = None  # the form the app answered with (callback type 9)
    choices: list[dict[str, Any]] | None = None  # the suggestions it answered (callback type 8)
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
        self.places: dict[str, Place] = {c: self._server_place(self.guild_id, c) for c in self.channel_ids}
        # What the Developer Portal's Installation settings offer: Guild Install and User Install.
        self.install_types = [GUILD_INSTALL, USER_INSTALL]
        self.user_installs: set[str] = set()  # members who installed the app for themselves
        self.dm_channels: dict[str, str] = {}  # member id -> the bot's DM channel with them
        self.dms_closed: set[str] = set()  # members whose DMs refuse the bot (50007)
        self.recommended_shards = 1  # what GET /gateway/bot tells a bot that lets Discord decide
        self.moderator = User(self.snowflake(), "mod")
        self.member = User(self.snowflake(), "alice")
        self.other = User(self.snowflake(), "bob")
        self.moderator_role = self.snowflake()
        self.requests: list[Recorded] = []
        self.messages: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}  # attachment id -> bytes
        self.downloads: list[str] = []  # attachment ids fetched from the CDN, in order
        self.file_types: dict[str, str] = {}  # attachment id -> the Content-Type the CDN answers
        self.unsized: set[str] = set()  # files the CDN sends without a Content-Length (chunked)
        self.interactions: dict[str, Interaction] = {}
        self.commands: dict[str, dict[str, Any]] = {}  # synced global slash commands by name
        self.menus: dict[str, dict[str, Any]] = {}  # synced message and user commands by name
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
        self.places[channel_id] = self._server_place(guild_id, channel_id)
        return channel_id

    @staticmethod
    def _server_place(guild_id: str, channel_id: str) -> Place:
        return Place(channel_id, CONTEXT_GUILD, GUILD_TEXT, guild_id)

    def foreign_server(self) -> str:
        """A server that never invited the bot (its members may have installed the app for
        themselves); returns its channel's id."""
        guild_id, channel_id = self.snowflake(), self.snowflake()
        self.places[channel_id] = Place(
            channel_id, CONTEXT_GUILD, GUILD_TEXT, guild_id, bot_member=False, guild_install=False
        )
        return channel_id

    def group_dm(self, *users: User) -> str:
        """A group DM of these members (the bot is not in it); returns its id."""
        channel_id = self.snowflake()
        self.places[channel_id] = Place(
            channel_id,
            CONTEXT_PRIVATE,
            GROUP_DM,
            bot_member=False,
            guild_install=False,
            recipients=tuple(u.id for u in users),
        )
        return channel_id

    def bot_dm(self, user: User) -> str:
        """The bot's DM channel with `user` (the one POST /users/@me/channels opens)."""
        if user.id not in self.dm_channels:
            channel_id = self.snowflake()
            self.dm_channels[user.id] = channel_id
            self.places[channel_id] = Place(channel_id, CONTEXT_BOT_DM, DM, recipients=(user.id,))
        return self.dm_channels[user.id]

    def place_of(self, channel_id: str) -> Place:
        place = self.places.get(channel_id)
        if place is None:
            raise AssertionError(f"the fake knows no channel {channel_id}")
        return place

    def guild_of(self, channel_id: str) -> str | None:
        """The server of a channel, if it is a server's (installed or not)."""
        place = self.places.get(channel_id)
        return place.guild_id if place is not None else None

    def user(self, user_id: str) -> User:
        found = next((u for u in self.users if u.id == user_id), None)
        if found is None:
            raise AssertionError(f"the fake knows no user {user_id}")
        return found

    @property
    def users(self) -> list[User]:
        return [self.bot_user, self.owner, self.moderator, self.member, self.other]

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
        self.file_types[att_id] = content_type
        return {
            "id": att_id,
            "filename": filename,
            "size": len(data) if size is None else size,
            "url": f"{self.base_url}/cdn/{att_id}/{filename}",
            "proxy_url": f"{self.base_url}/cdn/{att_id}/{filename}",
            "content_type": content_type,
        }

    def embed_image(
        self,
        filename: str,
        content_type: str,
        data: bytes,
        *,
        kind: str = "image",
        url: str | None = None,
        sized: bool = True,
    ) -> dict[str, Any]:
        """An embed showing a picture, as Discord makes one: a link to an image (`kind` "image":
        the picture is the embed's thumbnail) or a rich embed with an `image`. `url` is the
        picture's own address (default: a site of the fake that counts who fetched it); Discord's
        media proxy (`proxy_url`) serves the bytes; `sized=False` serves them without a length."""
        att_id = self.snowflake()
        self.files[att_id] = data
        self.file_types[att_id] = content_type
        if not sized:
            self.unsized.add(att_id)
        picture = {
            "url": url or f"{self.base_url}/elsewhere/{att_id}/{filename}",
            "proxy_url": f"{self.base_url}/media/{att_id}/{filename}",
            "width": 64,
            "height": 64,
        }
        if kind == "image":
            return {"type": "image", "url": picture["url"], "thumbnail": picture}
        return {"type": "rich", "title": filename, "image": picture}

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
            self.file_types[new_id] = mimetypes.guess_type(filename)[0] or "application/octet-stream"
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
        """A message the bot posts: its own (`inter` None) or an interaction's."""
        specs = body.get("attachments")
        if specs is None:
            specs = [{"id": i, "filename": f} for i, (f, _) in enumerate(files)]
        message = self.store_message(
            channel_id,
            self.bot_user,
            content=body.get("content") or "",
            attachments=self.attachments(specs, files, []),
            embeds=body.get("embeds") or [],
            kind=0 if inter is None else 20,
            flags=int(body.get("flags") or 0),
            components=body.get("components") or [],
            via="channel" if inter is None else "interaction",
        )
        message["allowed_mentions"] = body.get("allowed_mentions")
        if inter is not None:
            message["webhook_id"] = self.app_id
            message["application_id"] = self.app_id
            message["interaction_id"] = inter.id
        return message

    def store_message(
        self,
        channel_id: str,
        author: User,
        *,
        content: str,
        attachments: list[dict[str, Any]],
        embeds: list[dict[str, Any]],
        kind: int = 0,
        flags: int = 0,
        components: list[dict[str, Any]] | None = None,
        via: str,
    ) -> dict[str, Any]:
        """A new message in a channel, stored; `via` says who made it ("channel", "interaction":
        the bot; "member")."""
        message: dict[str, Any] = {
            "id": self.snowflake(),
            "channel_id": channel_id,
            "guild_id": self.guild_of(channel_id),
            "author": author.payload(),
            "content": content,
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": attachments,
            "embeds": embeds,
            "pinned": False,
            "type": kind,
            "flags": flags,
            "components": components or [],
            "edits": 0,
            "via": via,
        }
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
