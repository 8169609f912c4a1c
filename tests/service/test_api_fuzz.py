"""Fuzz every route of the engine's API with malformed requests (hypothesis, derandomised, a few
seconds), on a single engine (SQLite) and on an API node on PostgreSQL: no answer is a 5xx, every
refusal is the contract's short JSON without the secret, and a refused request leaves the database
as it was. Run with -s to see how many requests it sent."""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_http import request_bytes, send
from service_helpers import SECRET, db_dump, make_settings
from service_helpers import request as job_request

from engine.service.app import DB_NAME
from spooky.engine_client import EngineClient

#: Examples hypothesis draws; each is one request. Derandomised, so every run sends the same ones.
EXAMPLES = 400
MAX_ANSWER_BYTES = 16 * 1024

ROUTES = [
    # method, path template, query parameters it knows, its JSON body or None
    ("GET", "/v1/health", [], None),
    ("POST", "/v1/jobs", [], "job"),
    ("GET", "/v1/jobs", ["guild_id", "user_id", "state", "undelivered", "limit"], None),
    ("GET", "/v1/jobs/{job}", [], None),
    ("POST", "/v1/jobs/{job}/cancel", [], "cancel"),
    ("PATCH", "/v1/jobs/{job}/client", [], "client"),
    ("POST", "/v1/jobs/{job}/delivered", [], None),
    ("GET", "/v1/queue", ["guild_id", "user_id"], None),
    ("GET", "/v1/events", ["job_id", "guild_id", "after"], None),
    ("POST", "/v1/uploads", ["user_id", "channel_id"], "bytes"),
    ("GET", "/v1/artifacts/{artifact}", [], None),
    ("POST", "/v1/artifacts/{artifact}/fit", ["max_bytes"], None),
    ("GET", "/v1/last-image", ["user_id", "channel_id"], None),
    ("GET", "/v1/prompts", ["user_id", "guild_id", "q", "limit"], None),
    ("GET", "/v1/limits", [], None),
    ("GET", "/v1/guilds/{guild}/limits", [], None),
    ("PATCH", "/v1/guilds/{guild}/limits", [], "limits"),
    ("GET", "/v1/guilds/{guild}/limits/log", [], None),
    ("GET", "/metrics", [], None),
]


def _valid_bodies() -> dict[str, Any]:
    return {
        "job": json.loads(job_request().model_dump_json()),
        "cancel": {"actor_id": "2", "is_moderator": False},
        "client": {"client": {"token": "t"}},
        "limits": {"actor_id": "2", "changes": {"max_steps": 30}},
    }


# --- strategies -------------------------------------------------------------------------------

nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "²",
            "١٢٣",
            "１２",
            "\u200b",
            "\x00",
            "\ud800",
            "-1",
            "0",
            "1e400",
            "NaN",
            "true",
            "yes",
            str(2**63),
            str(2**64),
            "9" * 30,
            " 1",
            "1_0",
            "../../etc/passwd",
            "%00",
            "A" * 70,
        ]
    ),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    nasty_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(nasty_text, inner, max_size=4)),
    max_leaves=12,
)


def _mutate(body: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """The valid body with one field (maybe nested) replaced, added or removed."""
    body = json.loads(json.dumps(body))
    target = body
    while True:
        nested = [k for k, v in target.items() if isinstance(v, dict)]
        if not nested or not data.draw(st.booleans()):
            break
        target = target[data.draw(st.sampled_from(nested))]
    key = data.draw(st.one_of(st.sampled_from(sorted(target) or ["x"]), nasty_text))
    if data.draw(st.booleans()) or key not in target:
        target[key] = data.draw(json_values)
    else:
        del target[key]
    return body


def _raw_body(kind: str | None, data: st.DataObject) -> bytes:
    valid = _valid_bodies()
    choice = data.draw(st.sampled_from(["mutated", "random", "deep", "surrogate", "bytes", "many", "empty"]))
    if choice == "mutated" and kind in valid:
        return json.dumps(_mutate(valid[kind], data)).encode()
    if choice == "deep":
        depth = data.draw(st.integers(min_value=100, max_value=5000))
        return b'{"client": ' + b"[" * depth + b"]" * depth + b"}"
    if choice == "surrogate":
        return b'{"prompt": "\\ud800", "actor_id": "\\udfff", "client": {"a": "\\ud83d"}}'
    if choice == "bytes":
        return data.draw(st.binary(max_size=300))
    if choice == "many":
        return json.dumps({f"k{i}": i for i in range(data.draw(st.integers(1, 15_000)))}).encode()
    if choice == "empty":
        return b""
    return json.dumps(data.draw(json_values)).encode()


@st.composite
def malformed_requests(draw: st.DrawFn, ids: dict[str, str]) -> tuple[str, bytes]:
    data = draw(st.data())
    method, template, params, kind = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 9)) == 0:  # now and then a method the route does not have
        method = draw(st.sampled_from(["DELETE", "PUT", "PATCH", "POST", "GET"]))
    parts = {k: draw(st.one_of(st.just(v), nasty_text)) for k, v in ids.items()}
    path = template.format(
        **{k: quote(v.encode("utf-8", "surrogatepass"), safe="") or "x" for k, v in parts.items()}
    )
    query = draw(
        st.dictionaries(st.one_of(st.sampled_from(params or ["x"]), nasty_text), nasty_text, max_size=4)
    )
    target = path + ("?" + urlencode(query, errors="surrogatepass") if query else "")
    auth = draw(
        st.sampled_from(
            [
                b"Bearer " + SECRET.encode(),  # the right secret: the body or the query is what is wrong
                b"Bearer " + SECRET.encode(),
                b"",
                b"Bearer wrong",
                b"Bearer \xff\xfe" + SECRET.encode(),
                "Bearer ünïcode".encode(),
                b"\x00Bearer " + SECRET.encode(),
                b"Basic " + SECRET.encode(),
                b"Bearer " + SECRET.encode() + b"\x7f",
            ]
        )
    )
    headers = [(b"Authorization", auth)] if auth else []
    body = _raw_body(kind, data) if kind or draw(st.booleans()) else b""
    encoding = draw(st.sampled_from([None, None, b"gzip", b"deflate", b"br", b"gzip, gzip", b"x-junk"]))
    if encoding is not None:
        headers.append((b"Content-Encoding", encoding))
        if encoding == b"gzip" and draw(st.booleans()):
            body = gzip.compress(body)
        elif encoding == b"deflate" and draw(st.booleans()):
            body = zlib.compress(body)
    if template == "/v1/events" and draw(st.booleans()):
        headers.append((b"Last-Event-ID", draw(nasty_text).encode("utf-8", "surrogatepass")))
    headers.append((b"Content-Type", draw(st.sampled_from([b"application/json", b"text/plain", b"\xff"]))))
    return template, request_bytes(method, target, headers, body)


# --- the engine, on its own thread so hypothesis can drive it synchronously --------------------


def pg_dump(url: str) -> list[str]:
    """Every row of every table of the PostgreSQL database at `url`, in a stable order."""
    import psycopg

    rows: list[str] = []
    with psycopg.connect(url, autocommit=True) as con:
        tables = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        ).fetchall()
        for (table,) in tables:
            for row in con.execute(f'SELECT * FROM "{table}"').fetchall():
                rows.append(f"{table} {row!r}")
    return sorted(rows)


@pytest.fixture(params=["sqlite", "postgres-api-node"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    from engine.service.app import EngineService

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-engine", daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    if request.param == "sqlite":
        settings = make_settings(tmp_path)
        dump = functools.partial(db_dump, tmp_path / DB_NAME)
    else:
        url = request.getfixturevalue("pg_url")
        settings = make_settings(tmp_path, engine={"database_url": url, "role": "api"})
        dump = functools.partial(pg_dump, url)
    service = EngineService(settings, port=0, autoload=False)
    service.dump = dump  # what a refused request must leave as it was
    run(service.start())

    async def seed() -> dict[str, str]:
        async with EngineClient(service.url, SECRET, timeout=120) as client:  # the first submit imports torch
            job = (await client.submit(job_request())).job.id
            await client.update_limits("100", "2", {"max_steps": 40})
        return {"job": job, "artifact": "AAAAAAAAAAAA", "guild": "100"}

    try:
        yield service, run(seed())
    finally:
        run(service.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def test_no_malformed_request_is_a_5xx_or_changes_anything(engine: tuple[Any, dict[str, str]]):
    service, ids = engine
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(case=malformed_requests(ids))
    def one(case: tuple[str, bytes]) -> None:
        route, data = case
        before = service.dump()
        answer = send(service.port, data)
        seen["sent"] += 1
        assert answer.status < 500, (route, data[:300], answer.body[:300])
        if answer.status < 400:
            seen["accepted"] += 1
            return
        seen["refused"] += 1
        assert answer.headers.get("content-type", "").startswith("application/json"), (route, answer.headers)
        assert set(answer.json()) <= {"error", "refusal"}, answer.body[:300]
        assert len(answer.body) <= MAX_ANSWER_BYTES, (route, len(answer.body))
        assert SECRET.encode() not in answer.body
        assert service.dump() == before, (route, data[:300])

    started = time.monotonic()
    one()
    print(
        f"\nfuzz: {time.monotonic() - started:.1f} s, {seen['sent']} requests over {len(ROUTES)} routes, "
        f"{seen['refused']} refused with a 4xx, "
        f"{seen['accepted']} accepted, 0 answered 5xx"
    )
    assert seen["sent"] >= EXAMPLES and seen["refused"] > seen["accepted"]


#: Ids no engine hands out: a NUL (PostgreSQL's text refuses it), an encoded slash, odd scripts,
#: a path segment far longer than any id.
ODD_IDS = ["a\x00b", "\x00", "a/b", "..", "١٢٣٤٥٦٧٨", "\ud800abcdefgh", "A" * 8000, "abc def ghij"]


@pytest.mark.parametrize("odd", ODD_IDS, ids=lambda v: repr(v[:12]))
def test_an_id_no_engine_hands_out_is_404_on_every_store(engine: tuple[Any, dict[str, str]], odd: str):
    service, _ = engine
    quoted = quote(odd.encode("utf-8", "surrogatepass"), safe="")
    auth = [(b"Authorization", b"Bearer " + SECRET.encode()), (b"Content-Type", b"application/json")]
    bodies = {"cancel": b'{"actor_id": "2"}', "client": b'{"client": {"a": "b"}}'}
    before = service.dump()
    for method, template, _, kind in ROUTES:
        if "{job}" not in template and "{artifact}" not in template:
            continue
        target = template.format(job=quoted, artifact=quoted)
        if "fit" in template:
            target += "?max_bytes=100000"
        answer = send(service.port, request_bytes(method, target, auth, bodies.get(kind or "", b"")))
        assert answer.status == 404, (method, target[:80], answer.status, answer.body[:200])
        assert answer.json()["error"]["code"] == "not_found"
    assert service.dump() == before
