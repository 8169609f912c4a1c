"""The interactions Discord sends the bot: slash commands typed by the definition the bot synced,
and presses of a button on a message it posted, with the context Discord adds to each.

Every interaction here comes from a server that installed the app (`context` 0, the guild as
the authorizing integration owner), with the member's permissions and the app's.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from fake_discord import payloads
from fake_discord.state import OPT_ATTACHMENT, OPT_CHANNEL, PERM_ALL_MEMBER, DiscordState, Interaction, User

APPLICATION_COMMAND, MESSAGE_COMPONENT = 2, 3
CHAT_INPUT, BUTTON = 1, 2


def command_data(
    state: DiscordState, command: str, values: dict[str, Any], *, guild_id: str | None
) -> dict[str, Any]:
    """The `data` of a slash command ("spooky" or "limits set") with these option values."""
    names = command.split()
    definition = state.commands.get(names[0])
    if definition is None:
        raise AssertionError(f"command {names[0]!r} was not synced; synced: {sorted(state.commands)}")
    resolved: dict[str, dict[str, Any]] = {}
    data: dict[str, Any] = {
        "id": definition["id"],
        "name": names[0],
        "type": CHAT_INPUT,
        "options": _options(state, definition, names[1:], values, resolved),
        "guild_id": guild_id,
    }
    if resolved:
        data["resolved"] = resolved
    return data


def button_data(message: dict[str, Any], custom_id: str) -> dict[str, Any]:
    """The `data` of a press of the button `custom_id` on `message`."""
    ids = [c.get("custom_id") for row in message.get("components", []) for c in row.get("components", [])]
    if custom_id not in ids:
        raise AssertionError(f"no button {custom_id!r} on message {message['id']}; buttons: {ids}")
    return {"custom_id": custom_id, "component_type": BUTTON}


def _options(
    state: DiscordState,
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
                "options": _options(state, sub, path[1:], values, resolved),
            }
        ]
    out = []
    by_name = {o["name"]: o for o in options}
    for name, value in values.items():
        if name not in by_name:
            raise AssertionError(f"no option {name!r} in {definition['name']!r}; options: {sorted(by_name)}")
        kind = by_name[name]["type"]
        if kind == OPT_ATTACHMENT:
            resolved.setdefault("attachments", {})[value["id"]] = value
            value = value["id"]
        elif kind == OPT_CHANNEL:
            resolved.setdefault("channels", {})[str(value)] = payloads.channel(state, str(value)) | {
                "permissions": str(PERM_ALL_MEMBER)
            }
            value = str(value)
        out.append({"name": name, "type": kind, "value": value})
    return out


def create(
    state: DiscordState,
    kind: int,
    data: dict[str, Any],
    *,
    user: User,
    channel_id: str,
    permissions: int,
    size_limit: int,
    message: dict[str, Any] | None = None,
) -> Interaction:
    """A new interaction in a server's channel, recorded with a fresh token (not yet sent)."""
    guild_id = state.guild_of(channel_id)
    assert guild_id is not None, f"no guild has channel {channel_id}"
    inter_id = state.snowflake()
    token = "tok_" + secrets.token_urlsafe(24)
    payload: dict[str, Any] = {
        "id": inter_id,
        "application_id": state.app_id,
        "type": kind,
        "data": data,
        "guild_id": guild_id,
        "guild": {"id": guild_id, "locale": "en-US", "features": []},
        "channel_id": channel_id,
        "channel": payloads.channel(state, channel_id),
        "member": payloads.member(state, user, permissions),
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
    state.interactions[inter_id] = inter
    return inter
