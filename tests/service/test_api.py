"""The engine API against a real SQLite file, no models loaded (the engine stays `loading`, which
accepts and stores submits): auth, bad requests, refusals, idempotency, limits and their log,
uploads."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import aiohttp
import pytest
from PIL import Image
from service_helpers import SECRET, db_dump, make_settings, request, running_engine

from engine.service.app import DB_NAME
from spooky.contract import JobState, RefusalCode
from spooky.engine_client import EngineClient, EngineRefused, EngineRequestError


def _auth(secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _valid_body() -> dict:
    return json.loads(request().model_dump_json())


async def test_health_is_open_and_reports_loading(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, client):
        health = await client.health()
        assert health.status == "loading" and health.queue_length == 0
        async with aiohttp.ClientSession() as http, http.get(f"{svc.url}/v1/health") as resp:
            assert resp.status == 200


BAD_REQUESTS = [
    # (name, method, path, headers, body, status, code)
    ("no secret", "POST", "/v1/jobs", {}, "valid", 401, "unauthorized"),
    ("wrong secret", "POST", "/v1/jobs", _auth("not-the-secret"), "valid", 401, "unauthorized"),
    ("no secret on a read", "GET", "/v1/queue", {}, None, 401, "unauthorized"),
    ("no secret on metrics", "GET", "/metrics", {}, None, 401, "unauthorized"),
    ("unknown field", "POST", "/v1/jobs", _auth(), {**_valid_body(), "bogus": 1}, 422, "invalid_request"),
    ("wrong type", "POST", "/v1/jobs", _auth(), {**_valid_body(), "steps": "many"}, 422, "invalid_request"),
    ("negative steps", "POST", "/v1/jobs", _auth(), {**_valid_body(), "steps": -3}, 422, "invalid_request"),
    ("blank prompt", "POST", "/v1/jobs", _auth(), {**_valid_body(), "prompt": "  "}, 422, "invalid_request"),
    ("not an object", "POST", "/v1/jobs", _auth(), [1, 2], 422, "invalid_request"),
    ("malformed JSON", "POST", "/v1/jobs", _auth(), b'{"kind": "spooky",', 400, "malformed_json"),
    ("empty body", "POST", "/v1/jobs", _auth(), b"", 422, "invalid_request"),
    ("oversized body", "POST", "/v1/jobs", _auth(), b"x" * 5000, 413, "body_too_large"),
    ("unknown job", "GET", "/v1/jobs/doesnotexist", _auth(), None, 404, "not_found"),
    (
        "cancel unknown job",
        "POST",
        "/v1/jobs/doesnotexist/cancel",
        _auth(),
        {"actor_id": "1"},
        404,
        "not_found",
    ),
    ("unknown route", "GET", "/v1/nope", _auth(), None, 404, "not_found"),
    ("bad state filter", "GET", "/v1/jobs?state=bogus", _auth(), None, 422, "invalid_request"),
    ("unknown query parameter", "GET", "/v1/queue?guild=1", _auth(), None, 422, "invalid_request"),
    ("bad guild id", "GET", "/v1/guilds/abc/limits", _auth(), None, 422, "invalid_request"),
    (
        "unknown limit",
        "PATCH",
        "/v1/guilds/1/limits",
        _auth(),
        {"actor_id": "2", "changes": {"x": 1}},
        422,
        "invalid_request",
    ),
    (
        "limit out of range",
        "PATCH",
        "/v1/guilds/1/limits",
        _auth(),
        {"actor_id": "2", "changes": {"max_steps": 0}},
        422,
        "invalid_limits",
    ),
    (
        "bad Last-Event-ID",
        "GET",
        "/v1/events",
        {**_auth(), "Last-Event-ID": "x"},
        None,
        422,
        "invalid_request",
    ),
    ("unknown artifact", "GET", "/v1/artifacts/AAAAAAAAAAAA", _auth(), None, 404, "not_found"),
    ("no last image", "GET", "/v1/last-image?user_id=1&channel_id=2", _auth(), None, 404, "not_found"),
    ("wrong method", "DELETE", "/v1/jobs", _auth(), None, 405, "method_not_allowed"),
]


async def test_bad_requests_get_a_json_reason_and_change_nothing(tmp_path: Path):
    settings = make_settings(tmp_path, engine={"max_body_bytes": 2048})
    async with running_engine(settings, autoload=False) as (svc, client):
        await client.submit(request())  # some state to protect
        db = tmp_path / DB_NAME
        before = db_dump(db)
        async with aiohttp.ClientSession() as http:
            for name, method, path, headers, body, status, code in BAD_REQUESTS:
                if body == "valid":
                    body = _valid_body()
                kwargs = (
                    {"data": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
                )
                async with http.request(method, svc.url + path, headers=headers, **kwargs) as resp:
                    assert resp.status == status, name
                    assert resp.content_type == "application/json", name
                    answer = await resp.json()
                assert answer["error"]["code"] == code, (name, answer)
                assert answer["error"]["message"], name
        assert db_dump(db) == before
        # Validation details name the offending field.
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{svc.url}/v1/jobs", headers=_auth(), json={**_valid_body(), "bogus": 1}) as resp,
        ):
            details = (await resp.json())["error"]["details"]
        assert any(d["loc"] == ["bogus"] and d["type"] == "extra_forbidden" for d in details)


async def test_the_client_maps_errors_to_typed_exceptions(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, client):
        with pytest.raises(EngineRequestError) as e:
            await client.job("doesnotexist")
        assert e.value.status == 404 and e.value.body.error.code == "not_found"
        async with EngineClient(svc.url, "wrong") as intruder:
            with pytest.raises(EngineRequestError) as e:
                await intruder.queue()
            assert e.value.status == 401
        assert await client.last_image("1", "2") is None


async def test_an_unreachable_engine_is_engine_unavailable():
    from spooky.engine_client import EngineUnavailable

    async with EngineClient("http://127.0.0.1:9", SECRET, timeout=2) as client:
        with pytest.raises(EngineUnavailable, match=r"not reachable at http://127\.0\.0\.1:9"):
            await client.health()


async def test_submit_answers_at_once_with_position_and_eta(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (_, client):
        first = await client.submit(request(user="1"))
        second = await client.submit(request(user="2"))
        assert first.job.state is JobState.QUEUED and first.job.position == 1
        assert second.job.position == 2 and second.job.eta_s > first.job.eta_s > 0
        # The view echoes the request as sent, and knows its place in the queue.
        assert first.job.request.seed is None and (await client.job(first.job.id)).position == 1
        listed = await client.jobs(guild_id="100")
        assert [j.id for j in listed] == [first.job.id, second.job.id]
        queue = await client.queue(user_id="2")
        assert queue.length == 2 and [j.id for j in queue.jobs] == [second.job.id]


async def test_idempotent_submit_returns_the_same_job(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (_, client):
        first = await client.submit(request(idempotency_key="interaction-1"))
        again = await client.submit(request(idempotency_key="interaction-1"))
        assert again.duplicate and not first.duplicate and again.job.id == first.job.id
        # Concurrent retries of one interaction create one job.
        answers = await asyncio.gather(
            *(client.submit(request(idempotency_key="interaction-2")) for _ in range(10))
        )
        assert len({a.job.id for a in answers}) == 1
        assert sum(not a.duplicate for a in answers) == 1
        assert len(await client.jobs()) == 2


async def test_refusals_carry_code_values_and_status(tmp_path: Path):
    settings = make_settings(tmp_path, limits={"cooldown_s": 60, "max_steps": 30})
    async with running_engine(settings, autoload=False) as (svc, client):
        with pytest.raises(EngineRefused) as e:
            await client.submit(request(steps=31))
        r = e.value.refusal
        assert (r.code, e.value.status, r.limit, r.allowed) == (
            RefusalCode.OUT_OF_RANGE,
            422,
            "max_steps",
            "1–30",
        )
        assert "31" in r.message and "1–30" in r.message

        await client.submit(request(user="7"))
        with pytest.raises(EngineRefused) as e:
            await client.submit(request(user="7"))
        r = e.value.refusal
        assert r.code is RefusalCode.COOLDOWN and e.value.status == 429 and 0 < r.retry_after_s <= 60
        # Moderators skip the cooldown.
        await client.submit(request(user="7", moderator=True))

        with pytest.raises(EngineRefused) as e:
            await client.submit(request("nightmare", "nightmare", user="8"))
        assert e.value.refusal.code is RefusalCode.NO_PREVIOUS_IMAGE and e.value.status == 409
        assert "/spooky" in e.value.refusal.message

        with pytest.raises(EngineRefused) as e:
            await client.submit(request("nightmare", "nightmare", user="8", init_artifact="AAAAAAAAAAAA"))
        assert e.value.refusal.code is RefusalCode.BAD_IMAGE

        # A draining engine refuses new work with NOT_READY.
        svc.core.status = "draining"
        with pytest.raises(EngineRefused) as e:
            await client.submit(request(user="9"))
        assert e.value.refusal.code is RefusalCode.NOT_READY
        svc.core.status = "loading"


async def test_limits_read_write_log_and_enforcement(tmp_path: Path):
    settings = make_settings(tmp_path, limits={"max_steps": 40})
    async with running_engine(settings, autoload=False) as (_, client):
        limits = await client.limits("555")
        assert limits.max_steps == 40 and limits.banned_words == [] and not limits.paused
        t0 = time.time()
        updated = await client.update_limits(
            "555", "42", {"banned_words": ["Clown", "pale fangs"], "allowed_channels": ["200", "201"]}
        )
        assert updated.banned_words == ["clown", "pale fangs"] and updated.allowed_channels == ["200", "201"]
        await client.update_limits("555", "43", {"paused": True})
        log = await client.limits_log("555")
        assert [(c.actor_id, c.changes) for c in log] == [
            ("42", {"banned_words": ["clown", "pale fangs"], "allowed_channels": ["200", "201"]}),
            ("43", {"paused": True}),
        ]
        assert all(t0 - 1 <= c.at <= time.time() + 1 for c in log)
        assert await client.limits_log("556") == []

        def on_555(prompt: str = "a ghost", **kw) -> object:
            return request(prompt=prompt, guild="555", **{"channel": "200", **kw})

        for who in (False, True):  # paused refuses moderators too
            with pytest.raises(EngineRefused) as e:
                await client.submit(on_555(moderator=who))
            assert e.value.refusal.code is RefusalCode.PAUSED and e.value.status == 409
        await client.update_limits("555", "43", {"paused": False})
        with pytest.raises(EngineRefused) as e:
            await client.submit(on_555(channel="999"))
        assert e.value.refusal.code is RefusalCode.CHANNEL_NOT_ALLOWED
        for prompt in ("an EVIL clown", "Pale   Fangs and blood", "clown!"):
            with pytest.raises(EngineRefused) as e:
                await client.submit(on_555(prompt, moderator=True))
            assert e.value.refusal.code is RefusalCode.BANNED_WORD and e.value.status == 422, prompt
        with pytest.raises(EngineRefused):
            await client.submit(on_555("a ghost", scare_prompt="clown:1|face:-0.5"))
        # Whole words only: "clowning" and "pale fangsy" are not "clown" and "pale fangs".
        accepted = await client.submit(on_555("clowning around, pale fangsy"))
        assert accepted.job.state is JobState.QUEUED
    # Limits survive a restart.
    async with running_engine(settings, autoload=False) as (_, client):
        assert (await client.limits("555")).banned_words == ["clown", "pale fangs"]
        assert len(await client.limits_log("555")) == 3


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


async def test_uploads_are_checked_and_stored_as_png(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (_, client):
        art = await client.upload(_png((48, 32)), user_id="1", channel_id="2")
        assert (art.media_type, art.width, art.height) == ("image/png", 48, 32)
        data = await client.artifact(art.id)
        assert Image.open(io.BytesIO(data)).size == (48, 32)
        bomb = _png((5000, 5000))  # 25 megapixels in a few kilobytes
        for bad in (b"definitely not an image", bomb, _png((40, 40))[:60]):
            with pytest.raises(EngineRefused) as e:
                await client.upload(bad, user_id="1", channel_id="2")
            assert e.value.refusal.code is RefusalCode.BAD_IMAGE and e.value.status == 422
        # An uploaded image can be animated.
        job = await client.submit(request("nightmare", "nightmare", init_artifact=art.id))
        assert job.job.artifacts["source"] == art.id


async def test_metrics_are_prometheus_text(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, client):
        await client.submit(request())
        async with aiohttp.ClientSession() as http, http.get(f"{svc.url}/metrics", headers=_auth()) as resp:
            text = await resp.text()
        assert resp.status == 200
        assert "spooky_queue_length 1.0" in text
        assert 'spooky_submits_total{outcome="accepted"} 1.0' in text
        assert "spooky_submit_seconds_count 1.0" in text


async def test_an_engine_without_a_secret_refuses_to_start(tmp_path: Path):
    from engine.service.app import EngineService
    from spooky.errors import ConfigError

    settings = make_settings(tmp_path, engine={"secret": None})
    with pytest.raises(ConfigError) as e:
        EngineService(settings)
    assert "SPOOKY_ENGINE_SECRET" in str(e.value) and "[engine]" in str(e.value)


async def test_event_streams_of_unknown_and_finished_jobs(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (_, client):
        with pytest.raises(EngineRequestError) as e:
            async for _ in client.events(job_id="AAAAAAAAAAAA"):
                pass
        assert e.value.status == 404
        job = (await client.submit(request())).job
        await client.cancel(job.id, actor_id="1")
        events = [e async for e in client.events(job_id=job.id)]
        assert [e.type.value for e in events] == ["queued", "cancelled"]
        # Resuming after the terminal event ends at once instead of waiting for ever.
        assert [e async for e in client.events(job_id=job.id, after=events[-1].id)] == []
