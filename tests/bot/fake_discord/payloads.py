"""Discord's objects as its API sends them: members, channels, servers, the application, READY.

Shapes follow the Discord API v10 documentation and what discord.py 2.x reads.
"""

from __future__ import annotations

import secrets
from typing import Any

from fake_discord.state import (
    DM,
    GROUP_DM,
    GUILD_TEXT,
    PERM_ALL_MEMBER,
    PERM_MANAGE_GUILD,
    DiscordState,
    User,
    now_iso,
)


def member(state: DiscordState, user: User, permissions: int | None = None) -> dict[str, Any]:
    roles = [state.moderator_role] if user is state.moderator else []
    out: dict[str, Any] = {
        "user": user.payload(),
        "roles": roles,
        "joined_at": now_iso(),
        "deaf": False,
        "mute": False,
        "flags": 0,
        "nick": None,
        "avatar": None,
    }
    if permissions is not None:
        out["permissions"] = str(permissions)
    return out


def channel(state: DiscordState, channel_id: str) -> dict[str, Any]:
    """A channel as the API describes it: a server's text channel, a DM or a group DM."""
    place = state.place_of(channel_id)
    if place.channel_type == DM:
        return {
            "id": channel_id,
            "type": DM,
            "recipients": [state.user(u).payload() for u in place.recipients],
            "last_message_id": None,
            "flags": 0,
        }
    if place.channel_type == GROUP_DM:
        return {
            "id": channel_id,
            "type": GROUP_DM,
            "recipients": [state.user(u).payload() for u in place.recipients],
            "name": None,
            "icon": None,
            "owner_id": place.recipients[0],
            "last_message_id": None,
            "flags": 0,
        }
    assert place.guild_id is not None
    channels = state.guild_channels.get(place.guild_id, [channel_id])
    return {
        "id": channel_id,
        "type": GUILD_TEXT,
        "guild_id": place.guild_id,
        "name": f"spooky-{channels.index(channel_id)}",
        "position": channels.index(channel_id),
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
    }


def guild(state: DiscordState, guild_id: str) -> dict[str, Any]:
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
        "id": state.moderator_role,
        "name": "moderators",
        "permissions": str(PERM_ALL_MEMBER | PERM_MANAGE_GUILD),
        "position": 1,
    }
    return {
        "id": guild_id,
        "name": "Haunted House",
        "icon": None,
        "owner_id": state.owner.id,
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
        "channels": [channel(state, c) for c in state.guild_channels[guild_id]],
        "threads": [],
        "members": [member(state, state.bot_user)],
        "member_count": 4,
        "large": False,
        "unavailable": False,
        "joined_at": now_iso(),
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


def message(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored message as the API sends it (without the fake's own bookkeeping)."""
    out = {k: v for k, v in stored.items() if k not in ("via", "edits", "deleted", "allowed_mentions")}
    if out.get("guild_id") is None:
        out.pop("guild_id", None)  # a DM's message has none
    return out


def bot_user(state: DiscordState) -> dict[str, Any]:
    """The bot's own user, as GET /users/@me and READY describe it."""
    return state.bot_user.payload() | {"verified": True, "mfa_enabled": False, "flags": 0}


def application(state: DiscordState) -> dict[str, Any]:
    return {
        "id": state.app_id,
        "name": "SpookyGAN",
        "icon": None,
        "description": "",
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": state.owner.payload(),
        "verify_key": "00",
        "flags": 0,
        "summary": "",
        "team": None,
        "bot": state.bot_user.payload(),
        "interactions_endpoint_url": None,
        # The Installation settings: where the app can be installed, and what each install grants.
        "integration_types_config": {
            str(t): {"oauth2_install_params": {"scopes": scopes, "permissions": "0"}}
            for t, scopes in ((0, ["applications.commands", "bot"]), (1, ["applications.commands"]))
            if t in state.install_types
        },
    }


def ready(state: DiscordState, guilds: list[str], shard: tuple[int, int]) -> dict[str, Any]:
    return {
        "v": 10,
        "user": bot_user(state),
        "guilds": [{"id": g, "unavailable": True} for g in guilds],
        "session_id": secrets.token_hex(8),
        "resume_gateway_url": state.gateway_url,
        "application": {"id": state.app_id, "flags": 0},
        "shard": list(shard),
    }
