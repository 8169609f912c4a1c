"""Discord's gateway: HELLO, IDENTIFY (with its shard), READY and GUILD_CREATE, heartbeats, RESUME,
and dispatching events on the session of the shard a server falls on.

Like Discord, a session is told of the servers on its shard only, and a server's events (its
interactions) arrive on the session of that server's shard.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import WSMsgType, web

from fake_discord import payloads
from fake_discord.state import DiscordState

#: One gateway session: its socket, its sequence number (a one-item list), its (shard, count).
Session = tuple[web.WebSocketResponse, list[int], tuple[int, int]]


class Gateway:
    def __init__(self, state: DiscordState) -> None:
        self.state = state
        self.sessions: list[Session] = []
        self.identified = asyncio.Event()
        self.ready_sent = 0  # READY frames sent (one per bot session)
        self.sessions_used: list[tuple[int, int]] = []  # the (shard, count) each event went to
        self._tasks: set[asyncio.Task[None]] = set()

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        state = self.state
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seq = [0]
        entry: Session = (ws, seq, (0, 1))
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
                    if frame["d"].get("token") != state.bot_token:
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    shard_id, shard_count = frame["d"].get("shard") or (0, 1)
                    entry = (ws, seq, (int(shard_id), int(shard_count)))
                    self.sessions.append(entry)
                    # The servers the bot user is in; servers it never joined are not announced.
                    guilds = [g for g in state.guild_channels if state.shard_of(g, shard_count) == shard_id]
                    await self._dispatch(ws, seq, "READY", payloads.ready(state, guilds, entry[2]))
                    for guild_id in guilds:
                        await self._dispatch(ws, seq, "GUILD_CREATE", payloads.guild(state, guild_id))
                    self.ready_sent += 1
                    self.identified.set()
                elif op == 6:
                    self.sessions.append(entry)
                    await self._dispatch(ws, seq, "RESUMED", {})
        finally:
            if entry in self.sessions:
                self.sessions.remove(entry)
            if not self.sessions:
                self.identified.clear()
        return ws

    def session_for(self, guild_id: str | None) -> Session:
        """The session a server's events go to: the newest one that runs the server's shard
        (direct messages and group DMs: shard 0)."""
        if not self.sessions:
            raise AssertionError("no bot is connected to the gateway")
        on_shard = [
            e for e in self.sessions if (self.state.shard_of(guild_id, e[2][1]) if guild_id else 0) == e[2][0]
        ]
        if not on_shard:
            raise AssertionError(f"no bot session runs the shard of guild {guild_id}")
        return on_shard[-1]

    async def send(self, session: Session, event: str, data: Any) -> None:
        ws, seq, shard = session
        self.sessions_used.append(shard)
        await self._dispatch(ws, seq, event, data)

    async def drop(self) -> None:
        """Close every gateway connection (the bot reconnects)."""
        for ws, *_ in list(self.sessions):
            await ws.close(code=4000)

    async def close(self) -> None:
        for ws, *_ in list(self.sessions):
            await ws.close()

    async def _ack_later(self, ws: web.WebSocketResponse) -> None:
        await asyncio.sleep(0.05)
        if not ws.closed:
            await ws.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))

    async def _dispatch(self, ws: web.WebSocketResponse, seq: list[int], event: str, data: Any) -> None:
        seq[0] += 1
        await ws.send_str(json.dumps({"op": 0, "s": seq[0], "t": event, "d": data}))
