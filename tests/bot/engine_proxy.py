"""A pass-through HTTP proxy in front of the engine that fails chosen requests (503), for tests.

Everything else, the event stream included, is forwarded as it comes, so the bot behind it talks
to the real engine; only the requests a test names see an unavailable engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


@dataclass
class Outage:
    method: str
    path_re: re.Pattern[str]
    times: int
    seen: list[str] = field(default_factory=list)  # paths of the requests that were failed


class EngineProxy:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.outages: list[Outage] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def fail(self, method: str, path_re: str, *, times: int) -> Outage:
        """Answer the next `times` matching requests 503, as an engine that is briefly down."""
        outage = Outage(method, re.compile(path_re), times)
        self.outages.append(outage)
        return outage

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        for outage in self.outages:
            if outage.times > 0 and outage.method == request.method and outage.path_re.search(path):
                outage.times -= 1
                outage.seen.append(path)
                self.requests.append((request.method, path, 503))
                body = {"error": {"code": "unavailable", "message": "injected by the test proxy"}}
                return web.json_response(body, status=503)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self._session.request(
            request.method,
            self.target + request.path_qs,
            headers=headers,
            data=await request.read(),
            timeout=aiohttp.ClientTimeout(total=None),
        ) as upstream:
            self.requests.append((request.method, path, upstream.status))
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
