"""Bad requests at the API's edge, sent as raw bytes to a real engine on a real SQLite file: each is
a 4xx with the contract's JSON body, short, without the secret, and changes nothing."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from raw_http import RawAnswer, request_bytes, send
from service_helpers import SECRET, db_dump, make_settings, request, running_engine

from engine.service.app import DB_NAME
from spooky.bounds import MAX_JSON_BODY_BYTES
from spooky.contract import RefusalCode

AUTH = (b"Authorization", f"Bearer {SECRET}".encode())
JSON = (b"Content-Type", b"application/json")


def _valid() -> dict[str, Any]:
    return json.loads(request().model_dump_json())


def _body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


async def _send(svc: Any, data: bytes) -> RawAnswer:
    return await asyncio.to_thread(send, svc.port, data)


def _error(answer: RawAnswer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    body = answer.json()
    key = "refusal" if "refusal" in body else "error"
    assert body[key]["code"] == code, body
    assert body[key]["message"]
    return body[key]


PROTECTED = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/queue"),
    ("GET", "/v1/events"),
    ("GET", "/v1/guilds/1/limits"),
    ("POST", "/v1/uploads?user_id=1&channel_id=2"),
    ("GET", "/metrics"),
]


async def test_undecodable_or_non_ascii_authorization_is_401(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, _):
        for value in (
            b"Bearer \xff\xfe\xfd",
            "Bearer géant".encode(),
            b"Bearer " + SECRET.encode() + b"\xc3",
        ):
            for method, path in PROTECTED:
                answer = await _send(svc, request_bytes(method, path, [(b"Authorization", value)]))
                error = _error(answer, 401, "unauthorized")
                assert "wrong" in error["message"], (value, path)


async def test_a_header_aiohttp_cannot_parse_is_json_and_the_secret_is_never_echoed_or_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, _):
        for bad in (
            request_bytes("GET", "/v1/queue", [(b"Authorization", b"\x00Bearer " + SECRET.encode())]),
            request_bytes("GET", "/v1/queue", [(b"Authorization", b"Bearer\r" + SECRET.encode())]),
            request_bytes("GET", "/v1/queue", [(b"X-" + SECRET.encode() + b"\x01", b"1"), AUTH]),
            b"NOT-HTTP " + SECRET.encode() + b"\r\n\r\n",
        ):
            answer = await _send(svc, bad)
            _error(answer, 400, "malformed_http")
            assert SECRET.encode() not in answer.body
    assert caplog.records, "the refusals are logged"
    assert SECRET not in caplog.text and all(SECRET not in str(r.exc_info) for r in caplog.records)


async def test_malformed_bodies_are_400_and_change_nothing(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, client):
        await client.submit(request())
        job = (await client.jobs())[0].id
        before = db_dump(tmp_path / DB_NAME)
        deep = "[" * 2000 + "]" * 2000
        cases = [
            ("POST", "/v1/jobs", b'{"kind": "spooky", "client": {"a": ' + deep.encode() + b"}}"),
            (
                "PATCH",
                "/v1/guilds/1/limits",
                b'{"actor_id": "1", "changes": {"paused": ' + deep.encode() + b"}}",
            ),
            ("POST", "/v1/jobs", _body(_valid())[:-1] + b', "scare_prompt": "\\ud800"}'),
            ("PATCH", f"/v1/jobs/{job}/client", b'{"client": {"token": "\\udfff"}}'),
            ("POST", f"/v1/jobs/{job}/cancel", b'{"actor_id": "\\ud800"}'),
        ]
        for method, path, body in cases:
            _error(await _send(svc, request_bytes(method, path, [AUTH, JSON], body)), 400, "malformed_json")
        for encoding in (b"gzip", b"deflate"):
            garbage = request_bytes(
                "POST", "/v1/jobs", [AUTH, JSON, (b"Content-Encoding", encoding)], b"junk"
            )
            _error(await _send(svc, garbage), 400, "undecodable_body")
        truncated = gzip.compress(_body(_valid()))[:-12]
        headers = [AUTH, JSON, (b"Content-Encoding", b"gzip")]
        _error(
            await _send(svc, request_bytes("POST", "/v1/jobs", headers, truncated)), 400, "undecodable_body"
        )
        brotli = [AUTH, JSON, (b"Content-Encoding", b"br")]
        _error(
            await _send(svc, request_bytes("POST", "/v1/jobs", brotli, b"\x8b\x02")),
            415,
            "unsupported_encoding",
        )
        assert db_dump(tmp_path / DB_NAME) == before
        # A well-formed compressed body is read as the JSON it holds.
        packed = request_bytes("POST", "/v1/jobs", headers, gzip.compress(_body(_valid())))
        assert (await _send(svc, packed)).status == 202


async def test_event_ids_beyond_int64_are_refused_before_the_stream_starts(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, _):
        too_big = str(2**63)
        for target, headers in (
            (f"/v1/events?after={too_big}", [AUTH]),
            ("/v1/events", [AUTH, (b"Last-Event-ID", too_big.encode())]),
            ("/v1/events", [AUTH, (b"Last-Event-ID", "٣".encode())]),  # an Arabic-Indic digit
            ("/v1/events", [AUTH, (b"Last-Event-ID", b"1_000")]),
        ):
            _error(await _send(svc, request_bytes("GET", target, headers)), 422, "invalid_request")
        largest = await _send(svc, request_bytes("GET", f"/v1/events?after={2**63 - 1}", [AUTH]))
        assert largest.status == 200 and largest.headers["content-type"].startswith("text/event-stream")


def _gzip_bomb(mib: int) -> bytes:
    """A gzip body of about 1 KB per MiB of zeros it expands to (repeated fully flushed blocks)."""
    block = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    one = block.compress(bytes(1 << 20)) + block.flush(zlib.Z_FULL_FLUSH)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + one * mib


async def test_compressed_bodies_are_bounded_before_they_are_decoded(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, _):
        before = db_dump(tmp_path / DB_NAME)
        gz = [JSON, (b"Content-Encoding", b"gzip")]
        # 200 KB that expand to 200 MiB: refused at the JSON bound, after that many decoded bytes.
        answer = await _send(svc, request_bytes("POST", "/v1/jobs", [AUTH, *gz], _gzip_bomb(200)))
        error = _error(answer, 413, "body_too_large")
        assert str(MAX_JSON_BODY_BYTES) in error["message"] and "gzip" in error["message"]
        upload = request_bytes("POST", "/v1/uploads?user_id=1&channel_id=2", [AUTH, *gz], _gzip_bomb(100))
        _error(await _send(svc, upload), 413, "body_too_large")  # 100 MiB > engine.max_body_bytes
        # 1 MB that would expand to 1 GiB, without the secret: refused unread. Inflating 1 GiB
        # costs a CPU second; the engine (this process) spends a small fraction of that.
        bomb = _gzip_bomb(1024)
        cpu = time.process_time()
        for path in ("/v1/jobs", "/v1/uploads?user_id=1&channel_id=2", "/v1/guilds/1/limits"):
            method = "PATCH" if "guilds" in path else "POST"
            _error(await _send(svc, request_bytes(method, path, gz, bomb)), 401, "unauthorized")
        assert time.process_time() - cpu < 0.5
        assert db_dump(tmp_path / DB_NAME) == before


async def test_error_bodies_stay_short_whatever_the_input(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, _):
        huge_prompt = {**_valid(), "prompt": "x" * 200_000}
        unknown = {**_valid(), **{f"f{i}": 0 for i in range(15_000)}}
        unknown_limits = {"actor_id": "1", "changes": {f"l{i}": 0 for i in range(15_000)}}
        for path, method, body in (
            ("/v1/jobs", "POST", huge_prompt),
            ("/v1/jobs", "POST", unknown),
            ("/v1/guilds/1/limits", "PATCH", unknown_limits),
        ):
            data = _body(body)
            assert len(data) <= MAX_JSON_BODY_BYTES
            answer = await _send(svc, request_bytes(method, path, [AUTH, JSON], data))
            error = _error(answer, 422, "invalid_request")
            assert len(answer.body) < 8 * 1024, (path, len(answer.body))
            assert "x" * 100 not in answer.body.decode()
            assert error["details"]
        counted = _error(
            await _send(svc, request_bytes("POST", "/v1/jobs", [AUTH, JSON], _body(unknown))),
            422,
            "invalid_request",
        )
        assert counted["details"][-1] == {"type": "truncated", "loc": [], "msg": "15000 errors in all"}
        over = {**_valid(), "prompt": "x" * (MAX_JSON_BODY_BYTES + 1)}
        answer = await _send(svc, request_bytes("POST", "/v1/jobs", [AUTH, JSON], _body(over)))
        _error(answer, 413, "body_too_large")
        assert len(answer.body) < 1024


async def test_small_edge_checks(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, client):
        job = (await client.submit(request())).job.id
        before = db_dump(tmp_path / DB_NAME)

        async def answer(method: str, path: str, body: Any = None) -> RawAnswer:
            data = b"" if body is None else _body(body)
            return await _send(svc, request_bytes(method, path, [AUTH, JSON], data))

        for guild in ("²", "١٢٣", "１２", "12\n"):  # superscript, Arabic-Indic, full-width digits, newline
            _error(await answer("GET", f"/v1/guilds/{quote(guild)}/limits"), 422, "invalid_request")
        for client_map in ({"token": "x" * 1001}, {"k" * 65: "1"}, {f"k{i}": "1" for i in range(17)}):
            _error(
                await answer("PATCH", f"/v1/jobs/{job}/client", {"client": client_map}),
                422,
                "invalid_request",
            )
            _error(
                await answer("POST", "/v1/jobs", {**_valid(), "client": client_map}), 422, "invalid_request"
            )
        for blank in ("\u200b\u200b", "\x00", "\x00\u200b \u2060\ufeff", "\x07\x1b\u200d", " \u3000 "):
            _error(await answer("POST", "/v1/jobs", {**_valid(), "prompt": blank}), 422, "invalid_request")
        requester = {**_valid()["requester"], "is_moderator": "yes"}
        for strictly_wrong in (
            {**_valid(), "requester": requester},
            {**_valid(), "steps": "5"},
            {**_valid(), "seed": 1.5},
            {**_valid(), "requester": {**requester, "is_moderator": 1}},
        ):
            _error(await answer("POST", "/v1/jobs", strictly_wrong), 422, "invalid_request")
        _error(
            await answer("POST", f"/v1/jobs/{job}/cancel", {"actor_id": "2", "is_moderator": "yes"}),
            422,
            "invalid_request",
        )
        for change in (
            {"paused": "yes"},
            {"max_steps": "30"},
            {"allowed_channels": [5]},
            {"cooldown_s": True},
        ):
            body = {"actor_id": "2", "changes": change}
            _error(await answer("PATCH", "/v1/guilds/1/limits", body), 422, "invalid_limits")
        assert db_dump(tmp_path / DB_NAME) == before
        # A blank scare prompt still means "the prompt".
        ok = await answer("POST", "/v1/jobs", {**_valid(), "scare_prompt": "\u200b"})
        assert ok.status == 202 and ok.json()["job"]["request"]["scare_prompt"] is None


LONG = " ".join(["ghost"] * 80)  # 80 CLIP tokens: over the 75 a prompt may use


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"prompt": LONG}, "80 CLIP tokens"),
        ({"scare_prompt": f"pale:1|{LONG}:-0.5"}, "80 CLIP tokens"),
        ({"kind": "nightmare", "prompt": LONG, "init_artifact": "AAAAAAAAAAAA"}, "80 CLIP tokens"),
        ({"scare_prompt": "pale:inf"}, ""),
    ],
)
async def test_prompts_clip_cannot_take_are_refused_while_the_models_load(
    tmp_path: Path, tiny_models: Any, fields: dict[str, Any], why: str
):
    from spooky.engine_client import EngineRefused

    req = request(**{"prompt": "dracula", **fields})
    refusals = []
    for autoload in (False, True):  # loading, then ready with the (tiny) models
        settings = make_settings(tmp_path / str(autoload))
        async with running_engine(settings, tiny_models if autoload else None, autoload=autoload) as (svc, c):
            assert svc.core.status == ("ready" if autoload else "loading")
            with pytest.raises(EngineRefused) as e:
                await c.submit(req)
            refusals.append((e.value.refusal.code, e.value.refusal.message))
            assert await c.jobs() == []
    assert refusals[0] == refusals[1] and refusals[0][0] is RefusalCode.BAD_PROMPT
    assert why in refusals[0][1]


async def test_a_client_that_leaves_mid_body_is_one_info_line_and_changes_nothing(tmp_path: Path, caplog):
    import socket

    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, _):
        before = db_dump(tmp_path / DB_NAME)
        caplog.clear()
        headers = [AUTH, (b"Content-Type", b"application/json")]
        with caplog.at_level(logging.INFO):
            for target in ("/v1/jobs", "/v1/uploads?user_id=1&channel_id=2"):
                head = request_bytes("POST", target, headers, b"x" * 1000)
                with socket.create_connection(("127.0.0.1", svc.port)) as sock:
                    sock.sendall(head[: len(head) - 990])  # the headers and 10 bytes of a 1000-byte body
                    await asyncio.sleep(0.2)
            async with asyncio.timeout(10):
                while sum("left before its request was read" in r.getMessage() for r in caplog.records) < 2:
                    await asyncio.sleep(0.05)
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert all(r.exc_info is None for r in caplog.records)
        assert db_dump(tmp_path / DB_NAME) == before
