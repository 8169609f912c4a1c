"""Prometheus metrics of the bot: commands, acknowledgement latency, Discord API calls and errors.

Served on `[bot] metrics_host:metrics_port` (`GET /metrics`; port 0 turns the endpoint off). Each bot
has its own registry, so two bots in one process (tests) never clash.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import discord
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

log = logging.getLogger(__name__)

#: Seconds from the interaction's creation (its snowflake) to our acknowledgement; Discord's limit is 3.
_ACK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 5)


class BotMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter(
            "spooky_bot_commands",
            "Slash commands and buttons by name and outcome (ok, user_error, error)",
            ["command", "outcome"],
            registry=r,
        )
        self.ack_seconds = Histogram(
            "spooky_bot_ack_seconds",
            "Interaction created (snowflake time) to acknowledged",
            buckets=_ACK_BUCKETS,
            registry=r,
        )
        self.discord_requests = Counter(
            "spooky_bot_discord_requests",
            "Discord API requests by method and status class (2xx, 4xx, 5xx, error)",
            ["method", "status"],
            registry=r,
        )
        self.discord_errors = Counter(
            "spooky_bot_discord_errors",
            "Discord API failures by HTTP status (429 included) or 'connection'",
            ["status"],
            registry=r,
        )
        self.engine_unreachable = Counter(
            "spooky_bot_engine_unreachable", "Calls to the engine that found it down", registry=r
        )

    def observe_ack(self, interaction: discord.Interaction, now: float | None = None) -> None:
        created: datetime = interaction.created_at
        latency = (now if now is not None else time.time()) - created.astimezone(UTC).timestamp()
        if 0 <= latency < 600:  # a clock far off (or a non-Discord id) would only pollute the histogram
            self.ack_seconds.observe(latency)

    def trace_config(self) -> aiohttp.TraceConfig:
        """Counts every request discord.py makes (passed to the client as `http_trace`)."""
        trace = aiohttp.TraceConfig()

        async def on_end(_: Any, __: Any, params: aiohttp.TraceRequestEndParams) -> None:
            status = params.response.status
            self.discord_requests.labels(params.method, f"{status // 100}xx").inc()
            if status >= 400:
                self.discord_errors.labels(str(status)).inc()

        async def on_exception(_: Any, __: Any, params: aiohttp.TraceRequestExceptionParams) -> None:
            self.discord_requests.labels(params.method, "error").inc()
            self.discord_errors.labels("connection").inc()

        trace.on_request_end.append(on_end)
        trace.on_request_exception.append(on_exception)
        return trace

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """A tiny aiohttp server for `GET /metrics` on the bot's event loop."""

    def __init__(self, metrics: BotMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        log.info("bot metrics on http://%s:%d/metrics", self.host, self.port)

    async def _serve(self, _: web.Request) -> web.Response:
        body = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
