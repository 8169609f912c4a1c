"""Async client of the engine's API, for the bot (no torch import).

Errors: `EngineUnavailable` when the engine cannot be reached (refused, time-out, 5xx),
`EngineRefused` when a limit or check refused a request (`.refusal` says why, for the user),
`EngineRequestError` for any other 4xx (`.status`, `.body`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, TypeAdapter, ValidationError

from spooky.contract import (
    API_PREFIX,
    AUTH_HEADER,
    SSE_KEEPALIVE_S,
    Artifact,
    CancelRequest,
    ClientState,
    ErrorBody,
    ErrorDetail,
    Event,
    GuildLimits,
    Health,
    JobList,
    JobRequest,
    JobState,
    JobView,
    LastImage,
    LimitsChange,
    LimitsUpdate,
    PromptList,
    QueueView,
    Refusal,
    RefusalBody,
    SubmitResponse,
)
from spooky.errors import SpookyError

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

_LIMITS_LOG = TypeAdapter(list[LimitsChange])
#: Reconnect back-off of the event stream: first wait, growth factor, cap (seconds). The cap is
#: low: the stream is how results reach members, and a reconnect costs the engine one query.
_BACKOFF = (0.5, 2.0, 5.0)
#: Silence for this long (over two missed keep-alives) means a dead link: reconnect.
_STREAM_READ_TIMEOUT_S = 2.5 * SSE_KEEPALIVE_S


class EngineUnavailable(SpookyError):
    """The engine cannot be reached: refused connection, time-out or a 5xx answer."""

    code = "engine_unavailable"


class EngineRefused(SpookyError):
    """A limit or a check refused the request; `refusal.message` is meant for the user."""

    code = "engine_refused"

    def __init__(self, refusal: Refusal, status: int = 429) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.status = status


class EngineRequestError(SpookyError):
    """The engine answered 4xx (bad request, unknown job, forbidden, …)."""

    code = "engine_request"

    def __init__(self, status: int, body: ErrorBody) -> None:
        super().__init__(f"engine answered {status}: {body.error.message}")
        self.status = status
        self.body = body


class EngineClient:
    """One engine at `base_url`, authenticated with `secret`."""

    def __init__(
        self,
        base_url: str,
        secret: str,
        *,
        timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._secret = secret
        self.timeout = timeout
        self._session = session
        self._own_session = session is None

    # --- plumbing ---------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    @property
    def _headers(self) -> dict[str, str]:
        return {AUTH_HEADER: f"Bearer {self._secret}"}

    async def close(self) -> None:
        if self._own_session and self._session is not None and not self._session.closed:
            await self._session.close()

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _unavailable(self, why: str) -> EngineUnavailable:
        return EngineUnavailable(
            f"the render engine is not reachable at {self.base_url}: {why}",
            hint="is `spooky engine` running, and do bot.engine_url and the secret match?",
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: BaseModel | None = None,
        data: bytes | None = None,
        params: dict[str, Any] | None = None,
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> tuple[int, bytes]:
        url = f"{self.base_url}{API_PREFIX}{path}"
        headers = dict(self._headers)
        body: bytes | None = data
        if json_body is not None:
            body = json_body.model_dump_json(exclude_unset=False).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            headers["Content-Type"] = "application/octet-stream"
        query = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        try:
            async with self._http().request(
                method,
                url,
                data=body,
                params=query,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                payload = await resp.read()
                status = resp.status
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise self._unavailable(str(e) or type(e).__name__) from e
        except TimeoutError as e:
            raise self._unavailable(f"no answer within {self.timeout:g} s") from e
        if status in ok:
            return status, payload
        raise self._error(status, payload)

    def _error(self, status: int, payload: bytes) -> SpookyError:
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        if isinstance(data, dict) and "refusal" in data:
            try:
                return EngineRefused(RefusalBody.model_validate(data).refusal, status)
            except ValidationError:
                pass
        if status >= 500:
            message = data.get("error", {}).get("message") if isinstance(data, dict) else None
            return self._unavailable(f"HTTP {status}" + (f": {message}" if message else ""))
        try:
            body = ErrorBody.model_validate(data)
        except ValidationError:
            text = payload[:500].decode("utf-8", "replace")
            body = ErrorBody(error=ErrorDetail(code="http_error", message=text or f"HTTP {status}"))
        return EngineRequestError(status, body)

    async def _get(self, model: type[M], path: str, **params: Any) -> M:
        _, payload = await self._request("GET", path, params=params)
        return model.model_validate_json(payload)

    # --- the API ----------------------------------------------------------------------------

    async def health(self) -> Health:
        """The engine's state; a draining or broken engine answers 503 with its Health too."""
        try:
            _, payload = await self._request("GET", "/health", ok=(200, 503))
        except EngineRequestError as e:
            raise self._unavailable(f"health answered {e.status}") from e
        return Health.model_validate_json(payload)

    async def submit(self, req: JobRequest) -> SubmitResponse:
        _, payload = await self._request("POST", "/jobs", json_body=req)
        return SubmitResponse.model_validate_json(payload)

    async def job(self, job_id: str) -> JobView:
        return await self._get(JobView, f"/jobs/{job_id}")

    async def jobs(
        self,
        *,
        guild_id: str | None = None,
        user_id: str | None = None,
        state: JobState | str | None = None,
        undelivered: bool = False,
        shards: tuple[int, list[int]] | None = None,
        limit: int = 100,
    ) -> list[JobView]:
        """`shards` = (shard_count, shard_ids): only the jobs of the servers those bot shards run."""
        answer = await self._get(
            JobList,
            "/jobs",
            guild_id=guild_id,
            user_id=user_id,
            state=state,
            undelivered=undelivered or None,
            shard_count=shards[0] if shards else None,
            shard_ids=",".join(map(str, shards[1])) if shards else None,
            limit=limit,
        )
        return answer.jobs

    async def cancel(self, job_id: str, actor_id: str, is_moderator: bool = False) -> JobView:
        body = CancelRequest(actor_id=actor_id, is_moderator=is_moderator)
        _, payload = await self._request("POST", f"/jobs/{job_id}/cancel", json_body=body)
        return JobView.model_validate_json(payload)

    async def set_client_state(self, job_id: str, client: dict[str, str]) -> JobView:
        """Merge the bot's bookkeeping into the job (an empty value removes a key)."""
        _, payload = await self._request(
            "PATCH", f"/jobs/{job_id}/client", json_body=ClientState(client=client)
        )
        return JobView.model_validate_json(payload)

    async def mark_delivered(self, job_id: str) -> JobView:
        _, payload = await self._request("POST", f"/jobs/{job_id}/delivered")
        return JobView.model_validate_json(payload)

    async def queue(self, *, guild_id: str | None = None, user_id: str | None = None) -> QueueView:
        return await self._get(QueueView, "/queue", guild_id=guild_id, user_id=user_id)

    async def upload(self, data: bytes, *, user_id: str, channel_id: str) -> Artifact:
        _, payload = await self._request(
            "POST", "/uploads", data=data, params={"user_id": user_id, "channel_id": channel_id}
        )
        return Artifact.model_validate_json(payload)

    async def artifact(self, artifact_id: str) -> bytes:
        _, payload = await self._request("GET", f"/artifacts/{artifact_id}")
        return payload

    async def fit_artifact(self, artifact_id: str, max_bytes: int) -> Artifact:
        """An MP4 re-encoded under `max_bytes` (the same artifact when it already fits)."""
        _, payload = await self._request(
            "POST", f"/artifacts/{artifact_id}/fit", params={"max_bytes": max_bytes}
        )
        return Artifact.model_validate_json(payload)

    async def last_image(self, user_id: str, channel_id: str) -> LastImage | None:
        try:
            return await self._get(LastImage, "/last-image", user_id=user_id, channel_id=channel_id)
        except EngineRequestError as e:
            if e.status == 404:
                return None
            raise

    async def recent_prompts(
        self, user_id: str, guild_id: str | None = None, query: str = "", limit: int = 25
    ) -> list[str]:
        """The user's own recent prompts there (guild None: without a server install), distinct,
        newest first, those containing `query` (case-insensitive)."""
        answer = await self._get(
            PromptList, "/prompts", user_id=user_id, guild_id=guild_id, q=query or None, limit=limit
        )
        return answer.prompts

    async def limits(self, guild_id: str | None) -> GuildLimits:
        """A server's limits; None: those of a context without a server install (the defaults)."""
        return await self._get(GuildLimits, f"/guilds/{guild_id}/limits" if guild_id else "/limits")

    async def update_limits(self, guild_id: str, actor_id: str, changes: dict[str, Any]) -> GuildLimits:
        body = LimitsUpdate(actor_id=actor_id, changes=changes)
        _, payload = await self._request("PATCH", f"/guilds/{guild_id}/limits", json_body=body)
        return GuildLimits.model_validate_json(payload)

    async def limits_log(self, guild_id: str) -> list[LimitsChange]:
        _, payload = await self._request("GET", f"/guilds/{guild_id}/limits/log")
        return _LIMITS_LOG.validate_json(payload)

    # --- event stream -----------------------------------------------------------------------

    async def events(
        self, *, guild_id: str | None = None, job_id: str | None = None, after: int = 0
    ) -> AsyncIterator[Event]:
        """Events after `after`, live, for ever (a job's stream ends after its terminal event).

        A dropped connection is re-opened with back-off, resuming after the last event yielded,
        so the caller sees every event once, in order.
        """
        last = after
        delay = _BACKOFF[0]
        params = {k: v for k, v in (("guild_id", guild_id), ("job_id", job_id)) if v is not None}
        url = f"{self.base_url}{API_PREFIX}/events"
        while True:
            headers = {**self._headers, "Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            try:
                async with self._http().get(
                    url,
                    params={**params, "after": str(last)},
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(
                        total=None, connect=self.timeout, sock_read=_STREAM_READ_TIMEOUT_S
                    ),
                ) as resp:
                    if resp.status != 200:
                        raise self._error(resp.status, await resp.read())
                    delay = _BACKOFF[0]
                    async for kind, data in _sse(resp.content):
                        if kind == "end":
                            return
                        event = Event.model_validate_json(data)
                        if event.id <= last:
                            continue  # never yield twice, whatever the server resends
                        last = event.id
                        yield event
                # The server closed the stream (restart, shutdown): reconnect.
                why = "the engine closed the event stream"
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as e:
                why = str(e) or type(e).__name__
            except EngineUnavailable as e:
                why = str(e)
            log.info("event stream interrupted (%s); reconnecting in %.1f s after event %d", why, delay, last)
            await asyncio.sleep(delay * (0.75 + random.random() / 2))
            delay = min(delay * _BACKOFF[1], _BACKOFF[2])


async def _sse(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str, str]]:
    """(event type, data) of each message of a text/event-stream; comments and `retry:` skipped."""
    kind, data = "message", []
    while True:
        raw = await content.readline()
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value.value if hasattr(value, "value") else value)
