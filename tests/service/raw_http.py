"""A raw HTTP/1.1 client for the API tests: it sends any bytes (a NUL in a header, undecodable
Authorization bytes, a body that does not match its Content-Encoding) that aiohttp's client refuses."""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request_bytes(
    method: str, target: str, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b""
) -> bytes:
    """A well-framed request (Content-Length set, connection closed after it) with these parts."""
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers or []]
    if body or method in ("POST", "PATCH", "PUT"):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def send(port: int, data: bytes, timeout: float = 30.0) -> RawAnswer:
    """Send `data` as is; the answer's status, headers and body (headers only for an event stream)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may answer (and close) before it read the whole body: read that answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"the server closed the connection without an answer: {buf[:200]!r}")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("content-type", "").startswith("text/event-stream"):
            return RawAnswer(int(status_line.split()[1]), headers, b"")
        length = int(headers.get("content-length", "-1"))
        while length < 0 or len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return RawAnswer(int(status_line.split()[1]), headers, body)
