"""The aiohttp runner of the engine's API: raw bodies (decoded by engine.service.bodies), and
aiohttp's own HTTP parser errors answered as the contract's JSON.

aiohttp answers a request it cannot parse (a NUL or other invalid byte in a header) with a plain
text 400 that quotes the offending line, and logs that line at ERROR: when the line is the
Authorization header, the secret is in the answer and in the log. Here neither quotes it.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from engine.service.api import error_response

log = logging.getLogger(__name__)


class _JsonErrorHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        what = type(exc).__name__ if exc is not None else "error"
        if isinstance(exc, ConnectionResetError):
            # The client went away mid-request (mid-body, say): an ordinary event, nothing was done.
            log.info("a client at %s left before its request was read; nothing was done", request.remote)
            resp = error_response(400, "client_left", "the connection was lost before the request was read")
            resp.force_close()
            return resp
        if status >= 500:
            self.log_exception("error handling a request from %s", request.remote, exc_info=exc)
        else:
            # The exception's text quotes the request's bytes (perhaps a credential): name its kind only.
            log.warning("refused a malformed HTTP request from %s: %s", request.remote, what)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was already being sent; closing the connection")
        if status >= 500:
            resp = error_response(status, "internal", "the engine hit an unexpected error; see its log")
        else:
            resp = error_response(
                status,
                "malformed_http",
                f"the request is not valid HTTP ({what}); header values are not repeated here",
            )
        resp.force_close()
        return resp


class _JsonErrorServer(Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class EngineRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer parser errors as JSON and leave bodies encoded."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, auto_decompress=False, **kwargs)

    async def _make_server(self) -> Server:
        base = await super()._make_server()
        return _JsonErrorServer(
            base.request_handler, request_factory=base.request_factory, loop=base._loop, **base._kwargs
        )
