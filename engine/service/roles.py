"""What each `[engine] role` runs, and what it refuses.

- `all`: today's single engine: the API and one worker in one process (SQLite or PostgreSQL).
- `api`: the HTTP API, event streams, artifacts and limits; never imports torch or loads models
  (submit-time prompt checks use engine.models.clip_tokens), so it runs on a small host; several
  may run behind one address.
- `worker`: loads the models, claims and renders jobs from the shared store; its HTTP port serves
  only /v1/health and /metrics (for the orchestrator and Prometheus).

`api` and `worker` only make sense with a database several processes share: a SQLite file
(one writer process, on one host's disk) is refused at start rather than half-working.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from spooky.config import Settings
from spooky.errors import ConfigError

ROLES = ("all", "api", "worker")
#: What a worker's port answers; everything else is the API nodes'.
WORKER_PATHS = frozenset({"/v1/health", "/metrics"})


def check_role(settings: Settings) -> str:
    """The role, after refusing one that cannot work with this configuration."""
    role = settings.engine.role
    if role != "all" and not settings.engine.database_url:
        raise ConfigError(
            f"[engine] role = {role!r} needs a database that several processes share, but "
            "database_url is empty (the SQLite file in data_dir serves one process)",
            hint=(
                "set SPOOKY_DATABASE_URL (or [engine] database_url) to a postgresql://… URL for "
                'every api and worker process, or run one `spooky engine` with role = "all"'
            ),
        )
    return role


def runs_api(role: str) -> bool:
    return role in ("all", "api")


def runs_worker(role: str) -> bool:
    return role in ("all", "worker")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def worker_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A worker's port: health and metrics; the API lives on the api nodes."""
    if request.path in WORKER_PATHS:
        return await handler(request)
    from engine.service.api import error_response

    return error_response(
        404,
        "not_found",
        f'{request.method} {request.path}: this engine is a worker ([engine] role = "worker"); it '
        "serves only /v1/health and /metrics; send API requests to an api node",
    )
