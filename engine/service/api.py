"""The engine's HTTP API (aiohttp): routes of `spooky.contract`, auth, body limit, validation, SSE.

Status codes:
  200/202  answers; 202 for an accepted submit
  400      malformed JSON (also: nested too deep,  ErrorBody code "malformed_json"
           a lone surrogate), undecodable gzip   ErrorBody code "undecodable_body"
           or unparseable HTTP                    ErrorBody code "malformed_http" (server.py)
  401      missing or wrong Bearer secret         ErrorBody code "unauthorized"
  403      cancel by someone not owner/moderator  ErrorBody code "forbidden"
  404      unknown job, artifact, route           ErrorBody code "not_found"
  409      cancel of a finished job               ErrorBody code "finished"
  413      body (raw or decoded) over its bound   ErrorBody code "body_too_large"
           (engine.max_body_bytes for uploads, bounds.MAX_JSON_BODY_BYTES for JSON)
  415      a Content-Encoding other than gzip/deflate  ErrorBody code "unsupported_encoding"
  422      unknown field, wrong type, bad value   ErrorBody code "invalid_request" (short pydantic
           details: types are strict, "yes" is no boolean and "5" no number)
  429/409/422  a limit or check refused a submit  RefusalBody (see REFUSAL_STATUS)
A refused or invalid request changes nothing. The secret is checked before any body is read,
and error answers never repeat the input whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.service.bodies import read_body
from engine.service.core import EngineCore, artifact_view, validation_details
from engine.service.errors import ApiError, DatabaseUnavailableError, DiskFullError, Refused
from engine.service.metrics import CONTENT_TYPE
from spooky.bounds import ID_PATTERN, MAX_EVENT_ID, MAX_JSON_BODY_BYTES, MIN_VIDEO_BYTES, SNOWFLAKE_PATTERN
from spooky.contract import (
    API_PREFIX,
    AUTH_HEADER,
    SSE_KEEPALIVE_S,
    ArtifactId,
    CancelRequest,
    ClientState,
    ErrorBody,
    ErrorDetail,
    EventType,
    HealthStatus,
    JobList,
    JobRequest,
    JobState,
    LimitsUpdate,
    RefusalBody,
    RefusalCode,
    Snowflake,
)

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

#: HTTP status of each refusal: 429 = capacity or time (retry later), 409 = the server's state
#: forbids it (paused, channel, nothing to animate, engine not ready), 422 = the request itself.
REFUSAL_STATUS: dict[RefusalCode, int] = {
    RefusalCode.QUEUE_FULL: 429,
    RefusalCode.SERVER_QUEUE_FULL: 429,
    RefusalCode.USER_LIMIT: 429,
    RefusalCode.COOLDOWN: 429,
    RefusalCode.PAUSED: 409,
    RefusalCode.CHANNEL_NOT_ALLOWED: 409,
    RefusalCode.NO_PREVIOUS_IMAGE: 409,
    RefusalCode.IMAGES_OFF: 409,
    RefusalCode.NOT_READY: 409,
    RefusalCode.BANNED_WORD: 422,
    RefusalCode.OUT_OF_RANGE: 422,
    RefusalCode.BAD_PROMPT: 422,
    RefusalCode.BAD_IMAGE: 422,
}

_TERMINAL_EVENTS = {EventType.FINISHED.value, EventType.FAILED.value, EventType.CANCELLED.value}
CORE = web.AppKey("core", EngineCore)
_SNOWFLAKE = re.compile(SNOWFLAKE_PATTERN, re.ASCII)
_ID = re.compile(ID_PATTERN, re.ASCII)
_EVENT_ID = re.compile(r"[0-9]{1,19}", re.ASCII)


# --- query strings --------------------------------------------------------------------------


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobsQuery(_Query):
    guild_id: Snowflake | None = None
    user_id: Snowflake | None = None
    state: JobState | None = None
    undelivered: bool = False  # jobs whose result the bot has not marked delivered, in any state
    # A sharded bot's own servers: shard_count with a comma-separated shard_ids ("0,2").
    shard_count: int | None = Field(None, ge=1, le=100_000)
    shard_ids: str | None = Field(None, pattern=r"^\d{1,6}(,\d{1,6})*$", max_length=7000)
    limit: int = Field(100, ge=1, le=1000)

    @model_validator(mode="after")
    def _shards_together(self) -> JobsQuery:
        if (self.shard_count is None) != (self.shard_ids is None):
            raise ValueError("shard_count and shard_ids go together")
        if self.shard_count is not None and any(
            int(i) >= self.shard_count for i in self.shard_ids.split(",")
        ):  # type: ignore[union-attr]
            raise ValueError("every shard id must be below shard_count")
        return self

    def filters(self) -> dict[str, Any]:
        """The store's `list_jobs` filters."""
        out = self.model_dump(exclude={"shard_count", "shard_ids"})
        if self.shard_count is not None and self.shard_ids is not None:
            out["shards"] = (self.shard_count, sorted({int(i) for i in self.shard_ids.split(",")}))
        return out


class QueueQuery(_Query):
    guild_id: Snowflake | None = None
    user_id: Snowflake | None = None


class EventsQuery(_Query):
    job_id: ArtifactId | None = None
    guild_id: Snowflake | None = None
    after: int = Field(0, ge=0, le=MAX_EVENT_ID)


class UserChannelQuery(_Query):
    user_id: Snowflake
    channel_id: Snowflake


class PromptsQuery(_Query):
    user_id: Snowflake
    guild_id: Snowflake | None = None  # none: the user's jobs without a server install
    q: str = Field("", max_length=100)  # what the member has typed so far
    limit: int = Field(25, ge=1, le=25)  # Discord shows at most 25 suggestions


class FitQuery(_Query):
    max_bytes: int = Field(..., ge=MIN_VIDEO_BYTES)


# --- helpers --------------------------------------------------------------------------------


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> web.Response:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, details=details or []))
    return web.json_response(text=body.model_dump_json(), status=status)


def model_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status)


def _validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(
            422, "invalid_request", f"the request does not match {model.__name__}", validation_details(e)
        ) from e


async def _body(request: web.Request, model: type[M]) -> M:
    limit = min(MAX_JSON_BODY_BYTES, _core(request).settings.engine.max_body_bytes)
    raw = await read_body(request, limit, "the JSON body limit")
    if not raw:
        return _validate(model, None)
    try:
        # pydantic's own parser: strict types, and too deep a nesting or a lone surrogate is an
        # invalid document (json.loads would recurse until RecursionError, or keep the surrogate).
        return model.model_validate_json(raw, strict=True)
    except ValidationError as e:
        syntax = [err for err in e.errors(include_url=False) if err["type"] == "json_invalid"]
        if syntax:
            raise ApiError(400, "malformed_json", f"the body is not valid JSON: {syntax[0]['msg']}") from e
        raise ApiError(
            422, "invalid_request", f"the request does not match {model.__name__}", validation_details(e)
        ) from e


def _query(request: web.Request, model: type[M]) -> M:
    return _validate(model, dict(request.query))


def _core(request: web.Request) -> EngineCore:
    return request.app[CORE]


def _path_id(request: web.Request, name: str) -> str:
    """A job or artifact id from the path; one the engine could never have handed out (a NUL, a
    slash, 8 KB of text) names nothing: 404 at once, on every store alike."""
    value = request.match_info[name]
    if not _ID.fullmatch(value):
        what = "job with id" if name == "job_id" else "artifact"
        shown = repr(value[:30]) + ("…" if len(value) > 30 else "")
        raise ApiError(404, "not_found", f"no {what} {shown}: ids are 8–64 letters, digits, '-' or '_'")
    return value


# --- middlewares ----------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes a JSON ErrorBody or RefusalBody."""
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, e.message, e.details)
    except Refused as e:
        r = e.refusal
        headers = {"Retry-After": str(max(1, round(r.retry_after_s)))} if r.retry_after_s else None
        return web.json_response(
            text=RefusalBody(refusal=r).model_dump_json(), status=REFUSAL_STATUS[r.code], headers=headers
        )
    except DiskFullError as e:
        return error_response(507, e.code, str(e))
    except DatabaseUnavailableError as e:
        # The shared database is down or restarting: nothing was accepted; the client retries.
        resp = error_response(503, e.code, str(e))
        resp.headers["Retry-After"] = "5"
        return resp
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
        message = {404: f"no route {request.method} {request.path}; see spooky/contract.py"}.get(
            e.status, e.reason
        )
        return error_response(e.status, code, message)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal", "the engine hit an unexpected error; see its log")


def auth_middleware(secret: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = f"Bearer {secret}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != f"{API_PREFIX}/health":
            header = request.headers.get(AUTH_HEADER, "")
            # The secret is ASCII (engine_secret checks); a header with any other character, or
            # with bytes that are not even UTF-8 (aiohttp keeps them as surrogates), is wrong.
            given = header.encode() if header.isascii() else b"\x00"
            # Constant-time compare: the time taken says nothing about how much of the secret matched.
            if not hmac.compare_digest(given, expected):
                why = "missing" if not header else "wrong"
                return error_response(
                    401, "unauthorized", f"{why} API secret: send 'Authorization: Bearer <engine.secret>'"
                )
        return await handler(request)

    return check


# --- routes ---------------------------------------------------------------------------------

routes = web.RouteTableDef()


@routes.get(f"{API_PREFIX}/health")
async def health(request: web.Request) -> web.Response:
    h = await _core(request).health()
    return model_response(h, 200 if h.status in (HealthStatus.READY, HealthStatus.LOADING) else 503)


@routes.post(f"{API_PREFIX}/jobs")
async def submit(request: web.Request) -> web.Response:
    req = await _body(request, JobRequest)
    answer = await _core(request).submit(req)
    return model_response(answer, 200 if answer.duplicate else 202)


@routes.get(f"{API_PREFIX}/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    q = _query(request, JobsQuery)
    jobs = await _core(request).jobs(**q.filters())
    return model_response(JobList(jobs=jobs))


@routes.get(API_PREFIX + "/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    return model_response(await _core(request).job(_path_id(request, "job_id")))


@routes.post(API_PREFIX + "/jobs/{job_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    body = await _body(request, CancelRequest)
    return model_response(await _core(request).cancel(_path_id(request, "job_id"), body))


@routes.patch(API_PREFIX + "/jobs/{job_id}/client")
async def set_client(request: web.Request) -> web.Response:
    body = await _body(request, ClientState)
    return model_response(await _core(request).set_client(_path_id(request, "job_id"), body.client))


@routes.post(API_PREFIX + "/jobs/{job_id}/delivered")
async def delivered(request: web.Request) -> web.Response:
    return model_response(await _core(request).mark_delivered(_path_id(request, "job_id")))


@routes.get(f"{API_PREFIX}/queue")
async def queue(request: web.Request) -> web.Response:
    q = _query(request, QueueQuery)
    return model_response(await _core(request).queue(q.guild_id, q.user_id))


@routes.get(f"{API_PREFIX}/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events after `after` (or Last-Event-ID), filtered by job or guild.

    A job's stream ends with `event: end` after its terminal event; other streams run until the
    client leaves or the engine stops.
    """
    q = _query(request, EventsQuery)
    after = q.after
    last_header = request.headers.get("Last-Event-ID")
    if last_header:
        if not _EVENT_ID.fullmatch(last_header) or int(last_header) > MAX_EVENT_ID:
            raise ApiError(
                422,
                "invalid_request",
                f"Last-Event-ID must be an event id (digits, at most {MAX_EVENT_ID}), "
                f"got {last_header[:30]!r}",
            )
        after = int(last_header)
    core = _core(request)
    job = await core.job(q.job_id) if q.job_id is not None else None  # 404 for an unknown job
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    await resp.write(b"retry: 1000\n\n")
    last = after
    wrote = time.monotonic()  # a filtered stream can stay silent while other jobs' events flow
    try:
        while not core.closing.is_set():
            seen = core.hub.latest
            batch = await core.events_after(last, q.job_id, q.guild_id)
            for ev in batch:
                payload = ev.model_dump_json()
                await resp.write(f"id: {ev.id}\nevent: {ev.type.value}\ndata: {payload}\n\n".encode())
                last = ev.id
                if q.job_id is not None and ev.type.value in _TERMINAL_EVENTS:
                    await resp.write(b"event: end\ndata: {}\n\n")
                    return resp
            if batch:
                wrote = time.monotonic()
                continue
            if job is not None and job.state.terminal:
                # Reconnected after the terminal event (the `end` line was lost): nothing will follow.
                await resp.write(b"event: end\ndata: {}\n\n")
                return resp
            await core.hub.wait_beyond(seen, max(0.0, SSE_KEEPALIVE_S - (time.monotonic() - wrote)))
            if time.monotonic() - wrote >= SSE_KEEPALIVE_S and not core.closing.is_set():
                await resp.write(b": keep-alive\n\n")
                wrote = time.monotonic()
    except (DatabaseUnavailableError, DiskFullError) as e:
        # The headers (200) are long gone: the only honest answer is to end the stream. The
        # client reconnects with Last-Event-ID and gets 503 until the database answers again.
        log.info("event stream after event %d ended: %s", last, e)
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the client left, or the engine is stopping
    return resp


@routes.post(f"{API_PREFIX}/uploads")
async def upload(request: web.Request) -> web.Response:
    q = _query(request, UserChannelQuery)
    data = await read_body(request, _core(request).settings.engine.max_body_bytes, "engine.max_body_bytes")
    return model_response(await _core(request).upload(data, q.user_id, q.channel_id), 201)


@routes.get(API_PREFIX + "/artifacts/{artifact_id}")
async def artifact(request: web.Request) -> web.Response:
    row, data = await _core(request).artifact(_path_id(request, "artifact_id"))
    return web.Response(
        body=data,
        content_type=row.media_type,
        headers={
            "Cache-Control": "private, max-age=86400",
            "X-Artifact": artifact_view(row).model_dump_json(),
        },
    )


@routes.post(API_PREFIX + "/artifacts/{artifact_id}/fit")
async def fit(request: web.Request) -> web.Response:
    q = _query(request, FitQuery)
    return model_response(await _core(request).fit_video(_path_id(request, "artifact_id"), q.max_bytes))


@routes.get(f"{API_PREFIX}/last-image")
async def last_image(request: web.Request) -> web.Response:
    q = _query(request, UserChannelQuery)
    return model_response(await _core(request).last_image(q.user_id, q.channel_id))


@routes.get(f"{API_PREFIX}/prompts")
async def recent_prompts(request: web.Request) -> web.Response:
    q = _query(request, PromptsQuery)
    return model_response(await _core(request).recent_prompts(q.user_id, q.guild_id, q.q, q.limit))


def _guild(request: web.Request) -> str:
    guild_id = request.match_info["guild_id"]
    if not _SNOWFLAKE.fullmatch(guild_id):  # ASCII digits: str.isdigit() also takes "²" and "٣"
        raise ApiError(
            422, "invalid_request", f"guild id must be a Discord snowflake (digits), got {guild_id[:30]!r}"
        )
    return guild_id


@routes.get(f"{API_PREFIX}/limits")
async def default_limits(request: web.Request) -> web.Response:
    """What applies without a server install (no moderator can change it): the operator's defaults."""
    return model_response(await _core(request).limits(None))


@routes.get(API_PREFIX + "/guilds/{guild_id}/limits")
async def get_limits(request: web.Request) -> web.Response:
    return model_response(await _core(request).limits(_guild(request)))


@routes.patch(API_PREFIX + "/guilds/{guild_id}/limits")
async def patch_limits(request: web.Request) -> web.Response:
    guild_id = _guild(request)
    body = await _body(request, LimitsUpdate)
    return model_response(await _core(request).update_limits(guild_id, body.actor_id, body.changes))


@routes.get(API_PREFIX + "/guilds/{guild_id}/limits/log")
async def get_limits_log(request: web.Request) -> web.Response:
    changes = await _core(request).limits_log(_guild(request))
    return web.json_response(text="[" + ",".join(c.model_dump_json() for c in changes) + "]")


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    core = _core(request)
    # Served during a database outage too (that is when it is read): the gauge keeps its last value.
    with contextlib.suppress(DatabaseUnavailableError):
        core.metrics.queue_length.set(await core.db(core.store.queue_length))
    core.metrics.update_gpu()
    return web.Response(body=core.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def build_app(core: EngineCore, secret: str) -> web.Application:
    """The aiohttp application; `secret` guards every route but /v1/health."""
    app = web.Application(
        client_max_size=core.settings.engine.max_body_bytes,
        middlewares=[errors_middleware, auth_middleware(secret)],
    )
    app[CORE] = core
    app.add_routes(routes)
    return app
