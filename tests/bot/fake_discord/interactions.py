"""The interactions Discord sends the bot, with the context Discord adds to each: slash commands
typed by the definition the bot synced, their autocomplete, message commands (Apps on a message),
presses of a button on a message, and the submit of a form (modal) the bot opened.

Where an interaction comes from is a `Place`. Like Discord, the fake offers a command only where
its synced definition allows it (`contexts`) and only through an installation that has it
(`integration_types`): the guild install where the bot is a member (and its own DMs), the user
install of a member who installed the app for themselves (anywhere). `authorizing_integration_owners`
says which installation(s) authorized it: "0" the server's id (or "0" in the bot's DMs), "1" the
member's id.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from fake_discord import payloads
from fake_discord.state import (
    CHAT_INPUT,
    CONTEXT_BOT_DM,
    CONTEXT_GUILD,
    GUILD_INSTALL,
    MESSAGE_COMMAND,
    OPT_ATTACHMENT,
    OPT_CHANNEL,
    PERM_ALL_MEMBER,
    PERM_BOT_DM,
    PERM_PRIVATE,
    USER_INSTALL,
    DiscordState,
    Interaction,
    Place,
    User,
)

APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 2, 3, 4, 5
BUTTON, TEXT_INPUT, ACTION_ROW, LABEL = 2, 4, 1, 18
ALL_CONTEXTS = [0, 1, 2]


def command_data(
    state: DiscordState,
    command: str,
    values: dict[str, Any],
    *,
    guild_id: str | None,
    focused: str | None = None,
) -> dict[str, Any]:
    """The `data` of a slash command ("spooky" or "limits set") with these option values; with
    `focused`, of its autocomplete while that option is being typed (values may be partial)."""
    names = command.split()
    definition = synced(state, names[0], CHAT_INPUT)
    resolved: dict[str, dict[str, Any]] = {}
    data: dict[str, Any] = {
        "id": definition["id"],
        "name": names[0],
        "type": CHAT_INPUT,
        "options": _options(state, definition, names[1:], values, resolved, focused),
    }
    if guild_id is not None:
        data["guild_id"] = guild_id
    if resolved:
        data["resolved"] = resolved
    return data


def message_command_data(state: DiscordState, name: str, message: dict[str, Any]) -> dict[str, Any]:
    """The `data` of the message command `name` used on `message` (Apps > name)."""
    definition = synced(state, name, MESSAGE_COMMAND)
    return {
        "id": definition["id"],
        "name": name,
        "type": MESSAGE_COMMAND,
        "target_id": message["id"],
        "resolved": {"messages": {message["id"]: payloads.message(message)}},
    }


def button_data(message: dict[str, Any], custom_id: str) -> dict[str, Any]:
    """The `data` of a press of the button `custom_id` on `message`."""
    ids = [c.get("custom_id") for row in message.get("components", []) for c in row.get("components", [])]
    if custom_id not in ids:
        raise AssertionError(f"no button {custom_id!r} on message {message['id']}; buttons: {ids}")
    return {"custom_id": custom_id, "component_type": BUTTON}


def modal_submit_data(modal: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """The `data` of the member submitting `modal` with these text inputs changed (by custom id);
    the others keep the value the form was opened with. Checked as Discord's client checks it."""
    inputs = {i["custom_id"]: i for i in _text_inputs(modal)}
    unknown = set(values) - set(inputs)
    if unknown:
        raise AssertionError(f"the form has no input {sorted(unknown)}; inputs: {sorted(inputs)}")

    def answer(text_input: dict[str, Any]) -> dict[str, Any]:
        value = values.get(text_input["custom_id"], text_input.get("value") or "")
        if text_input.get("required", True) and not value:
            raise AssertionError(f"input {text_input['custom_id']!r} is required")
        if len(value) > text_input.get("max_length", 4000) or (
            value and len(value) < text_input.get("min_length", 0)
        ):
            raise AssertionError(f"{value!r} is outside the length input {text_input['custom_id']!r} allows")
        return {
            "type": TEXT_INPUT,
            "id": text_input.get("id", 0),
            "custom_id": text_input["custom_id"],
            "value": value,
        }

    components = []
    for top in modal["components"]:
        if top["type"] == LABEL:
            components.append({"type": LABEL, "id": top.get("id", 0), "component": answer(top["component"])})
        else:
            components.append(
                {
                    "type": ACTION_ROW,
                    "id": top.get("id", 0),
                    "components": [answer(c) for c in top["components"]],
                }
            )
    return {"custom_id": modal["custom_id"], "components": components}


def _text_inputs(modal: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for top in modal["components"]:
        children = [top["component"]] if top["type"] == LABEL else top.get("components", [])
        out.extend(c for c in children if c["type"] == TEXT_INPUT)
    return out


def user_id_of(payload: dict[str, Any]) -> str:
    """Who sent an interaction: its member's user in a server, its user elsewhere."""
    return str((payload.get("member") or payload)["user"]["id"])


def synced(state: DiscordState, name: str, kind: int) -> dict[str, Any]:
    """The synced definition of command `name` of this type (a test using one the bot did not
    sync is a mistake in the test)."""
    table = state.commands if kind == CHAT_INPUT else state.menus
    definition = table.get(name)
    if definition is None or definition.get("type", CHAT_INPUT) != kind:
        raise AssertionError(f"command {name!r} (type {kind}) was not synced; synced: {sorted(table)}")
    return definition


def owners(state: DiscordState, place: Place, user: User, integration_types: list[int]) -> dict[str, str]:
    """`authorizing_integration_owners` of an interaction of `user` at `place` with something
    (a command, or the message a button is on) offered to these installation types."""
    out: dict[str, str] = {}
    if GUILD_INSTALL in integration_types and place.guild_install:
        out[str(GUILD_INSTALL)] = place.guild_id or "0"  # "0": the bot's own DMs
    if USER_INSTALL in integration_types and user.id in state.user_installs:
        out[str(USER_INSTALL)] = user.id
    return out


def available(state: DiscordState, definition: dict[str, Any], place: Place, user: User) -> dict[str, str]:
    """The authorizing owners of using `definition` at `place`; AssertionError where Discord would
    not offer the command there (not in its contexts, or no installation that has it)."""
    contexts = definition.get("contexts")
    if place.context not in (ALL_CONTEXTS if contexts is None else contexts):
        raise AssertionError(
            f"Discord does not offer {definition['name']!r} in context {place.context}: "
            f"its contexts are {contexts}"
        )
    found = owners(state, place, user, definition["integration_types"])
    if not found:
        raise AssertionError(
            f"{user.username} has no installation of the app that offers {definition['name']!r} in "
            f"channel {place.channel_id} (integration types {definition['integration_types']}, "
            f"user installs {sorted(state.user_installs)})"
        )
    return found


def _options(
    state: DiscordState,
    definition: dict[str, Any],
    path: list[str],
    values: dict[str, Any],
    resolved: dict[str, dict[str, Any]],
    focused: str | None,
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
                "options": _options(state, sub, path[1:], values, resolved, focused),
            }
        ]
    out = []
    by_name = {o["name"]: o for o in options}
    if focused is not None and not by_name.get(focused, {}).get("autocomplete"):
        raise AssertionError(f"option {focused!r} of {definition['name']!r} has no autocomplete")
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
        option: dict[str, Any] = {"name": name, "type": kind, "value": value}
        if name == focused:
            option["focused"] = True
        out.append(option)
    return out


def app_permissions(place: Place) -> int:
    """What the app may do at `place`: the bot member's permissions in a server that installed it,
    Discord's documented sets elsewhere."""
    if place.bot_member and place.context == CONTEXT_GUILD:
        return PERM_ALL_MEMBER
    return PERM_BOT_DM if place.context == CONTEXT_BOT_DM else PERM_PRIVATE


def create(
    state: DiscordState,
    kind: int,
    data: dict[str, Any],
    *,
    user: User,
    place: Place,
    authorizing: dict[str, str],
    permissions: int,
    size_limit: int,
    message: dict[str, Any] | None = None,
) -> Interaction:
    """A new interaction at `place`, recorded with a fresh token (not yet sent)."""
    inter_id = state.snowflake()
    token = "tok_" + secrets.token_urlsafe(24)
    payload: dict[str, Any] = {
        "id": inter_id,
        "application_id": state.app_id,
        "type": kind,
        "data": data,
        "channel_id": place.channel_id,
        "channel": payloads.channel(state, place.channel_id),
        "token": token,
        "version": 1,
        "app_permissions": str(app_permissions(place)),
        "locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": authorizing,
        "context": place.context,
        "attachment_size_limit": size_limit,
    }
    if place.guild_id is not None:
        payload |= {
            "guild_id": place.guild_id,
            "guild": {"id": place.guild_id, "locale": "en-US", "features": []},
            "guild_locale": "en-US",
            "member": payloads.member(state, user, permissions),
        }
    else:
        payload["user"] = user.payload()
    if message is not None:
        payload["message"] = payloads.message(message)
    inter = Interaction(inter_id, token, kind, payload, 0.0, time.monotonic())
    state.interactions[inter_id] = inter
    return inter
