"""Discord's REST API, the routes the bot uses: interaction callbacks and webhooks, channel
messages, opening a DM, command sync, the bot's user and application, the gateway address, the CDN.

Every request is recorded (`DiscordState.requests`) before it is answered; injected faults answer
first, then Discord's own rules: 413/40005 above the upload limit (the server's, and through an
interaction's webhook its `attachment_size_limit`), 401/50027 for a spent interaction token, 10062
for an interaction acknowledged too late, 403/50001 (Missing Access) for a channel the bot user is
not in, 403/50007 for a DM to a member whose DMs are closed, 400/50035 for a form, a suggestion
list or a command definition Discord would not take, and for a channel post with `enforce_nonce`
and a nonce seen in the last `nonce_window_s`, the message first created with it.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from aiohttp import web

from fake_discord import payloads
from fake_discord.faults import Dropped, Faults
from fake_discord.interactions import AUTOCOMPLETE, LABEL, MODAL_SUBMIT, TEXT_INPUT
from fake_discord.state import (
    CHAT_INPUT,
    DM,
    EPHEMERAL,
    LOADING,
    DiscordState,
    Interaction,
    Recorded,
)

JSON = "application/json"  # exactly: discord.py compares the header without parameters


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), headers={"Content-Type": JSON})


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"message": message, "code": code}, status)


def _invalid(why: str) -> web.Response:
    return _json({"message": "Invalid Form Body", "code": 50035, "errors": {"_errors": [why]}}, 400)


def _all_options(options: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A command's options, its sub-commands' included."""
    return [o for option in options for o in (option, *_all_options(option.get("options") or []))]


#: Discord's rule for slash command and option names (its regex, for ASCII input).
CHAT_NAME = re.compile(r"^[-_'a-z0-9]{1,32}$")


async def _read_body(request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
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


class Rest:
    """The REST side of the fake, acting on its state."""

    def __init__(self, state: DiscordState, faults: Faults) -> None:
        self.state = state
        self.faults = faults

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        """Discord's CDN and media proxy: a hosted file's bytes, with its Content-Type."""
        self.state.downloads.append(request.match_info["att_id"])
        return await self._serve(request)

    async def elsewhere(self, request: web.Request) -> web.StreamResponse:
        """A linked picture's own site (not Discord's), counted apart: "elsewhere:<id>"."""
        self.state.downloads.append("elsewhere:" + request.match_info["att_id"])
        return await self._serve(request)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        att_id = request.match_info["att_id"]
        data = self.state.files.get(att_id)
        if data is None:
            return web.Response(status=404)
        content_type = self.state.file_types.get(att_id, "application/octet-stream")
        if att_id not in self.state.unsized:
            return web.Response(body=data, headers={"Content-Type": content_type})
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for at in range(0, len(data), 64 * 1024):
            await response.write(data[at : at + 64 * 1024])
        await response.write_eof()
        return response

    async def api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body, files = await _read_body(request)
        rec = Recorded(request.method, path, dict(request.query), body, files, time.monotonic())
        self.state.requests.append(rec)
        try:
            response = await self._route(request, rec)
        except Dropped:
            rec.status = -1
            self.state.changed.set()
            raise
        rec.status = response.status
        self.state.changed.set()
        await self.faults.wait_if_held(rec)
        return response

    async def _route(self, request: web.Request, rec: Recorded) -> web.StreamResponse:
        state, method, path = self.state, rec.method, rec.path
        if fault := self.faults.take(rec):
            if fault.drop:
                assert request.transport is not None
                request.transport.close()
                raise Dropped
            return _error(fault.status, fault.code, f"injected {fault.status}")
        if state.upload_limit_bytes is not None and rec.upload_bytes > state.upload_limit_bytes:
            return _error(413, 40005, "Request entity too large")

        if m := re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path):
            return self._callback(m[1], m[2], rec)
        if m := re.fullmatch(r"/webhooks/(\d+)/([^/]+)(?:/messages/(@original|\d+))?", path):
            return self._webhook(m[1], m[2], m[3], rec)

        # Everything else is bot-authenticated.
        if request.headers.get("Authorization") != f"Bot {state.bot_token}":
            return _error(401, 0, "401: Unauthorized")
        if path == "/users/@me" and method == "GET":
            return _json(payloads.bot_user(state))
        if path == "/oauth2/applications/@me" and method == "GET":
            return _json(payloads.application(state))
        if path in ("/gateway", "/gateway/bot"):
            return _json(
                {
                    "url": state.gateway_url,
                    "shards": state.recommended_shards,
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
        if path == "/users/@me/channels" and method == "POST":
            return self._open_dm(rec)
        if m := re.fullmatch(r"/channels/(\d+)/messages(?:/(\d+))?", path):
            return self._channel_message(m[1], m[2], rec)
        return _error(404, 0, f"404: Not Found ({method} {path})")

    # --- commands --------------------------------------------------------------------------------

    def _sync(self, guild_id: str | None, rec: Recorded) -> web.Response:
        state = self.state
        if rec.method == "GET":
            return _json(list(state.commands.values()))
        if rec.method != "PUT" or not isinstance(rec.json, list):
            return _error(405, 0, "405: Method Not Allowed")
        out = []
        for cmd in rec.json:
            if why := self._bad_command(cmd):
                return _invalid(f"{cmd.get('name')!r}: {why}")
            kind = cmd.get("type", CHAT_INPUT)
            cmd = cmd | {
                "id": state.snowflake(),
                "application_id": state.app_id,
                "version": state.snowflake(),
                "type": kind,
                # Discord's defaults: the app's installation contexts, every interaction context.
                "integration_types": cmd.get("integration_types") or list(state.install_types),
                "contexts": cmd.get("contexts"),
            }
            if kind != CHAT_INPUT:
                cmd["description"] = ""  # "an empty string for USER and MESSAGE commands"
            if guild_id:
                cmd["guild_id"] = guild_id
            out.append(cmd)
        if guild_id is None:
            state.commands = {c["name"]: c for c in out if c["type"] == CHAT_INPUT}
            state.menus = {c["name"]: c for c in out if c["type"] != CHAT_INPUT}
        return _json(out)

    def _bad_command(self, cmd: dict[str, Any]) -> str | None:
        """Why Discord would refuse this command definition, if it would."""
        kind, name = cmd.get("type", CHAT_INPUT), str(cmd.get("name", ""))
        if kind == CHAT_INPUT and not CHAT_NAME.fullmatch(name):
            return "a slash command's name is 1-32 lowercase letters, digits, - _ '"
        if kind != CHAT_INPUT and not 1 <= len(name) <= 32:
            return "a context menu command's name is 1-32 characters"
        if kind != CHAT_INPUT and (cmd.get("description") or cmd.get("options")):
            return "message and user commands take no description and no options"
        if kind == CHAT_INPUT and not 1 <= len(cmd.get("description") or "") <= 100:
            return "a slash command's description is 1-100 characters"
        for option in _all_options(cmd.get("options") or []):
            if not CHAT_NAME.fullmatch(str(option.get("name", ""))):
                return f"option name {option.get('name')!r} is not 1-32 lowercase letters, digits, - _ '"
            if not 1 <= len(option.get("description") or "") <= 100:
                return f"option {option['name']!r}: a description is 1-100 characters"
            if len(option.get("choices") or []) > 25:
                return f"option {option['name']!r}: at most 25 choices"
        unsupported = set(cmd.get("integration_types") or []) - set(self.state.install_types)
        if unsupported:
            return (
                f"integration types {sorted(unsupported)} are not enabled in the app's Installation settings"
            )
        return None

    # --- interactions: the callback, then the token's webhook ------------------------------------

    def _callback(self, inter_id: str, token: str, rec: Recorded) -> web.Response:
        state = self.state
        inter = state.interactions.get(inter_id)
        if inter is None or inter.token != token:
            return _error(404, 10062, "Unknown interaction")
        if inter.acked_at is not None:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        if state.ack_deadline_s is not None and rec.at - inter.sent_at > state.ack_deadline_s:
            return _error(404, 10062, "Unknown interaction")
        body = rec.json if isinstance(rec.json, dict) else {}
        kind = body.get("type")
        data = body.get("data") or {}
        if why := self._bad_callback(inter, kind, data):
            return _invalid(why)
        if rec.upload_bytes > inter.payload["attachment_size_limit"]:
            return _error(413, 40005, "Request entity too large")
        inter.acked_at, inter.callback_type, inter.callback = rec.at, kind, body
        if kind == 8:
            inter.choices = data.get("choices", [])
        elif kind == 9:
            inter.modal = data
        inter.acked.set()
        channel_id = inter.payload["channel_id"]
        message = None
        if kind in (4, 5):
            flags = int(data.get("flags", 0)) & EPHEMERAL
            if kind == 5:
                message = state.new_message(channel_id, {"content": "", "flags": flags | LOADING}, [], inter)
            else:
                message = state.new_message(channel_id, data | {"flags": flags}, rec.files, inter)
            inter.original_id = message["id"]
        elif kind == 7 and inter.payload.get("message"):
            message = state.edit(state.messages[inter.payload["message"]["id"]], data, rec.files)
        if "with_response" not in rec.query:
            return web.Response(status=204)
        out: dict[str, Any] = {"interaction": {"id": inter_id, "type": inter.type}}
        if message is not None:
            out["interaction"] |= {
                "response_message_id": message["id"],
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(message["flags"] & EPHEMERAL),
            }
            out["resource"] = {"type": kind}
            if kind in (4, 7):  # "only present if type is CHANNEL_MESSAGE_WITH_SOURCE or UPDATE_MESSAGE"
                out["resource"]["message"] = message
        elif kind is not None:
            out["resource"] = {"type": kind}
        return _json(out)

    @staticmethod
    def _bad_callback(inter: Interaction, kind: Any, data: dict[str, Any]) -> str | None:
        """Why Discord would refuse this answer to `inter`, if it would."""
        if (kind == 8) != (inter.type == AUTOCOMPLETE):
            return "an autocomplete interaction is answered with suggestions (8), and only it"
        if kind == 8:
            choices = data.get("choices")
            if not isinstance(choices, list) or len(choices) > 25:
                return "at most 25 choices"
            for choice in choices:
                if not 1 <= len(str(choice.get("name", ""))) <= 100:
                    return f"a choice's name is 1-100 characters: {choice.get('name')!r}"
                if isinstance(choice.get("value"), str) and len(choice["value"]) > 100:
                    return f"a choice's value is at most 100 characters: {choice['value']!r}"
        if kind == 9:
            if inter.type == MODAL_SUBMIT:
                return "a form cannot answer a form"
            if not 1 <= len(str(data.get("title", ""))) <= 45 or len(str(data.get("custom_id", ""))) > 100:
                return "a form's title is 1-45 characters and its custom id at most 100"
            tops = data.get("components") or []
            if not 1 <= len(tops) <= 5:
                return "a form has 1-5 components"
            for top in tops:
                inputs = [top.get("component", {})] if top.get("type") == LABEL else top.get("components", [])
                for text_input in inputs:
                    if text_input.get("type") == TEXT_INPUT and len(text_input.get("value") or "") > int(
                        text_input.get("max_length", 4000)
                    ):
                        return "a text input's prefilled value is longer than its max_length"
        return None

    def _webhook(self, app_id: str, token: str, message_id: str | None, rec: Recorded) -> web.Response:
        state = self.state
        inter: Interaction | None = next((i for i in state.interactions.values() if i.token == token), None)
        if app_id != state.app_id or not state.token_ok(inter):
            return _error(401, 50027, "Invalid Webhook Token")
        assert inter is not None
        if rec.upload_bytes > inter.payload["attachment_size_limit"]:
            return _error(413, 40005, "Request entity too large")
        if message_id == "@original":
            message_id = inter.original_id
        if message_id is None:
            if rec.method != "POST":
                return _error(404, 10008, "Unknown Message")
            body = rec.json if isinstance(rec.json, dict) else {}
            original = state.messages.get(inter.original_id or "")
            if original is not None and not original.get("deleted") and original["flags"] & LOADING:
                # Discord: the first follow-up after a deferred response replaces the loading message.
                body = {k: v for k, v in body.items() if k != "flags"} | {
                    "flags": original["flags"] & ~LOADING
                }
                return _json(state.edit(original, body, rec.files))
            return _json(state.new_message(inter.payload["channel_id"], body, rec.files, inter))
        message = state.messages.get(message_id)
        if message is None or message.get("deleted"):
            return _error(404, 10008, "Unknown Message")
        return self._existing_message(message, rec)

    # --- the bot's own channel messages ----------------------------------------------------------

    def _open_dm(self, rec: Recorded) -> web.Response:
        """POST /users/@me/channels {recipient_id}: the bot's DM channel with that user."""
        body = rec.json if isinstance(rec.json, dict) else {}
        recipient = str(body.get("recipient_id", ""))
        if recipient not in {u.id for u in self.state.users} or recipient == self.state.bot_user.id:
            return _error(400, 50033, "Invalid Recipient(s)")
        channel_id = self.state.bot_dm(self.state.user(recipient))
        return _json(payloads.channel(self.state, channel_id))

    def _channel_message(self, channel_id: str, message_id: str | None, rec: Recorded) -> web.Response:
        state = self.state
        place = state.places.get(channel_id)
        if place is None:
            return _error(404, 10003, "Unknown Channel")
        if not place.bot_member:
            return _error(403, 50001, "Missing Access")
        if message_id is None:
            if rec.method != "POST":
                return _error(405, 0, "405: Method Not Allowed")
            if place.channel_type == DM and set(place.recipients) & state.dms_closed:
                return _error(403, 50007, "Cannot send messages to this user")
            body = rec.json if isinstance(rec.json, dict) else {}
            nonce = str(body["nonce"]) if body.get("enforce_nonce") and body.get("nonce") else None
            if nonce is not None and (seen := state.nonces.get((channel_id, nonce))):
                message_id, at = seen
                if time.monotonic() - at <= state.nonce_window_s and not state.messages[message_id].get(
                    "deleted"
                ):
                    return _json(state.messages[message_id])
            message = state.new_message(channel_id, body, rec.files, None)
            if nonce is not None:
                state.nonces[(channel_id, nonce)] = (message["id"], time.monotonic())
            return _json(message)
        message = state.messages.get(message_id)
        if message is None or message.get("deleted") or message["channel_id"] != channel_id:
            return _error(404, 10008, "Unknown Message")
        if rec.method == "PATCH" and message["flags"] & EPHEMERAL:
            # Discord edits an ephemeral message only through its interaction's webhook.
            return _error(404, 10008, "Unknown Message")
        return self._existing_message(message, rec)

    def _existing_message(self, message: dict[str, Any], rec: Recorded) -> web.Response:
        """GET, DELETE or PATCH a message that exists, by whichever route found it."""
        if rec.method == "GET":
            return _json(message)
        if rec.method == "DELETE":
            message["deleted"] = True
            return web.Response(status=204)
        if rec.method == "PATCH":
            return _json(self.state.edit(message, rec.json or {}, rec.files))
        return _error(405, 0, "405: Method Not Allowed")
