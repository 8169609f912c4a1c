"""Small child processes for the supervisor tests: `python children.py MODE ARGS…` (stdlib only)."""

from __future__ import annotations

import http.server
import json
import signal
import sys
import threading
import time
from pathlib import Path


def _on_term_write(marker: Path, code: int = 0) -> None:
    def handler(signum: int, _frame: object) -> None:
        marker.write_text(signal.Signals(signum).name)
        sys.exit(code)

    signal.signal(signal.SIGTERM, handler)


def graceful(ready: str, marker: str) -> None:
    """Runs until SIGTERM, then records it in `marker` and exits 0."""
    _on_term_write(Path(marker))
    Path(ready).write_text("ready")
    while True:
        time.sleep(0.05)


def stubborn(ready: str) -> None:
    """Ignores SIGTERM: only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(ready).write_text("ready")
    while True:
        time.sleep(0.05)


def exit_after(code: str, delay: str) -> None:
    time.sleep(float(delay))
    sys.exit(int(code))


def health(port_file: str, marker: str, status: str = "loading") -> None:
    """Answers GET /v1/health like the engine (any status), until SIGTERM."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/v1/health"
            answer = {"status": status, "preset": "tiny"} if found else {"error": {"code": "not_found"}}
            body = json.dumps(answer).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    _on_term_write(Path(marker))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tmp = Path(port_file + ".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.rename(port_file)  # atomic: the test never reads a half-written port
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    {"graceful": graceful, "stubborn": stubborn, "exit": exit_after, "health": health}[mode](*rest)
