"""The engine under faults, with real parts: leftovers of a kill, a read-only or full disk, an
ffmpeg that hangs, a signal to the whole process group, a job that takes the engine down each time."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from service_helpers import SECRET, make_settings, request, running_engine
from support import free_port
from test_process import ROOT, Engine, write_config

from spooky.contract import Event, EventType, JobState, JobView
from spooky.engine_client import EngineClient

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str) -> Iterator[Path]:
    """A real, small file system at `path` (a full or read-only disk), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def hanging_ffmpeg(tmp_path: Path) -> tuple[Path, Path]:
    """An 'ffmpeg' that never reads its input and never exits; it writes its pid to a marker."""
    marker = tmp_path / "ffmpeg.pid"
    script = tmp_path / "ffmpeg"
    script.write_text(f'#!/bin/sh\necho $$ >> "{marker}"\nexec sleep 600\n')
    script.chmod(0o755)
    return script, marker


def kill_pids(marker: Path) -> None:
    """End the fake encoders a test started (their own session: a kill of the engine spares them)."""
    if marker.exists():
        for pid in marker.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def wait_done(client: EngineClient, job_id: str, timeout: float) -> JobView:
    deadline = time.monotonic() + timeout
    while not (view := await client.job(job_id)).state.terminal:
        assert time.monotonic() < deadline, f"job {job_id} still {view.state.value} after {timeout} s"
        await asyncio.sleep(0.1)
    return view


# --- start-up after a kill ---------------------------------------------------------------------


async def test_a_leftover_reencode_folder_never_stops_the_engine_starting(tmp_path: Path):
    data = tmp_path / "data"
    leftover = data / "artifacts" / "tmp" / "spooky-fit-x"
    leftover.mkdir(parents=True)
    (leftover / "x264-0.log").write_bytes(b"pass 1")
    (data / "artifacts" / "tmp" / "abc.part").write_bytes(b"half a png")
    async with running_engine(make_settings(data), autoload=False) as (_, client):
        assert (await client.health()).status == "loading"
    assert list((data / "artifacts" / "tmp").iterdir()) == []


@needs_root
def test_a_read_only_data_dir_says_which_path_and_what_is_needed(tmp_path: Path):
    data = tmp_path / "data"
    with tmpfs(data, "1m", "ro"):
        cfg = write_config(tmp_path, free_port())
        res = subprocess.run(
            [sys.executable, "-m", "spooky.cli", "engine", "--config", str(cfg)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_")},
        )
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert str(data / "engine.sqlite3") in res.stderr and "must be a folder the engine's user can write" in (
        res.stderr
    )


async def test_the_sweep_deletes_files_that_have_no_row(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, client):
        upload = await client.upload(_png(), user_id="1", channel_id="2")
        kept = svc.files.path(svc.store.get_artifact(upload.id))
        stray = svc.files.root / "zz" / "zzStrayFileNoRow.png"  # a kill between move and row
        stray.parent.mkdir()
        stray.write_bytes(b"png bytes")
        young = svc.files.root / "zz" / "zzYoungFileNoRow.png"  # its row may be a moment away
        young.write_bytes(b"png bytes")
        old = time.time() - 2 * 3600
        for path in (stray, kept):
            os.utime(path, (old, old))
        await svc.core.sweep()
        assert not stray.exists()
        assert kept.exists() and young.exists()


def _png() -> bytes:
    from PIL import Image

    from engine.pipeline.image_files import png_bytes

    return png_bytes(Image.new("RGB", (8, 8), (200, 10, 10)))


# --- a full disk under SQLite ------------------------------------------------------------------


@needs_root
async def test_a_full_disk_under_the_database_is_degraded_then_recovers(tmp_path: Path):
    data = tmp_path / "data"
    with tmpfs(data, "4m"):
        async with running_engine(make_settings(data), autoload=False) as (svc, client):
            await client.submit(request(user="1"))
            filler = data / "filler"
            with contextlib.suppress(OSError), open(filler, "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            headers = {"Authorization": f"Bearer {SECRET}"}
            async with aiohttp.ClientSession() as http:
                statuses = []
                for user in "23456789":  # enough to outgrow the WAL pages already allocated
                    body = request(user=user, prompt="pale " * 60).model_dump_json()  # 300 chars, 60 tokens
                    post = {**headers, "Content-Type": "application/json"}
                    async with http.post(f"{svc.url}/v1/jobs", data=body, headers=post) as resp:
                        statuses.append(resp.status)
                        if resp.status == 507:
                            answer = await resp.json()
                            break
                assert statuses[-1] == 507, statuses
                assert answer["error"]["code"] == "disk_full"
                assert str(data / "engine.sqlite3") in answer["error"]["message"]
                async with http.get(f"{svc.url}/v1/health") as resp:
                    health = await resp.json()
                assert resp.status == 503 and health["status"] == "degraded"
                assert "disk full" in health["detail"] and str(data) in health["detail"]

            filler.unlink()  # space is back: no restart, no operator action
            assert (await client.health()).status == "loading"
            assert (await client.submit(request(user="9"))).job.state is JobState.QUEUED


# --- an ffmpeg that hangs ------------------------------------------------------------------------


async def test_a_hung_ffmpeg_is_stopped_by_the_time_limit_and_by_cancel(
    tmp_path: Path, tiny_models, monkeypatch
):
    script, marker = hanging_ffmpeg(tmp_path)
    settings = make_settings(tmp_path / "data", engine={"job_timeout_s": 3})
    try:
        async with running_engine(settings, tiny_models) as (svc, client):
            first = (await client.submit(request(user="1"))).job.id
            await wait_done(client, first, timeout=120)
            monkeypatch.setenv("SPOOKY_FFMPEG", str(script))
            hung = (await client.submit(request("nightmare", "nightmare", user="1"))).job.id
            after = (await client.submit(request(user="2"))).job.id
            done = await wait_done(client, hung, timeout=60)
            assert done.state is JobState.FAILED and done.error_code == "timeout", done.error
            assert "timed out after 3 s" in done.error

            # Cancel reaches a job blocked on ffmpeg too.
            svc.settings.engine.job_timeout_s = 900
            hung2 = (await client.submit(request("nightmare", "nightmare", user="1"))).job.id
            await wait_for(
                lambda: _async(marker.exists() and len(marker.read_text().split()) == 2), 60, "ffmpeg #2"
            )
            view = await client.cancel(hung2, actor_id="1")
            if not view.state.terminal:
                view = await wait_done(client, hung2, timeout=30)
            assert view.state is JobState.CANCELLED, view.error
            # The queue moved on.
            assert (await wait_done(client, after, timeout=120)).state is JobState.SUCCEEDED
        for pid in marker.read_text().split():  # every fake encoder was killed, none left behind
            assert not _alive(int(pid))
    finally:
        kill_pids(marker)


async def _async(value: bool) -> bool:
    return value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


# --- real engine processes ------------------------------------------------------------------------


def _db(tmp_path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(f"file:{tmp_path / 'data' / 'engine.sqlite3'}?mode=ro", uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


@pytest.mark.slow
async def test_sigterm_to_the_process_group_drains_instead_of_killing_ffmpeg(tmp_path: Path):
    script, marker = hanging_ffmpeg(tmp_path)
    port = free_port()
    cfg = write_config(tmp_path, port)
    client = EngineClient(f"http://127.0.0.1:{port}", SECRET)
    engine = Engine(cfg, tmp_path / "engine.log", env={"SPOOKY_FFMPEG": str(script)}, group=True)
    try:
        await engine.wait_up(client)
        first = (await client.submit(request(user="1"))).job.id
        await wait_done(client, first, timeout=120)
        job = (await client.submit(request("nightmare", "nightmare", user="1"))).job.id
        await wait_for(lambda: _async(marker.exists()), 120, "the encoder to start")
        os.killpg(engine.proc.pid, signal.SIGTERM)  # what Ctrl-C or systemd's stop sends
        assert engine.proc.wait(60) == 0, engine.output()
    finally:
        engine.kill()
        kill_pids(marker)
        await client.close()
    row = _db(tmp_path, "SELECT state, attempts FROM jobs WHERE id = ?", (job,))[0]
    last = _db(tmp_path, "SELECT type, data FROM events WHERE job_id = ? ORDER BY id DESC LIMIT 1", (job,))[0]
    assert row == ("queued", 0), engine.output()
    assert last[0] == "interrupted" and '"retried": true' in last[1]


@pytest.mark.slow
async def test_a_job_that_kills_the_engine_every_time_fails_after_the_attempt_limit(tmp_path: Path):
    from engine.service.store import MAX_ATTEMPTS

    script, marker = hanging_ffmpeg(tmp_path)
    port = free_port()
    cfg = write_config(tmp_path, port)
    log = tmp_path / "engine.log"
    client = EngineClient(f"http://127.0.0.1:{port}", SECRET)
    env = {"SPOOKY_FFMPEG": str(script)}
    try:
        engine = Engine(cfg, log, env=env)
        await engine.wait_up(client)
        first = (await client.submit(request(user="1"))).job.id
        await wait_done(client, first, timeout=120)
        job = (await client.submit(request("nightmare", "nightmare", user="1"))).job.id
        for attempt in range(1, MAX_ATTEMPTS + 1):
            await wait_for(
                lambda n=attempt: _async(marker.exists() and len(marker.read_text().split()) == n),
                120,
                f"attempt {attempt} to reach ffmpeg",
            )
            engine.kill()  # kill -9 while the job runs: as if the job itself crashed the engine
            kill_pids(marker)
            engine = Engine(cfg, log, env=env)
            await engine.wait_up(client)
        view = await client.job(job)
        assert view.state is JobState.FAILED and view.error_code == "interrupted", view
        assert view.attempts == MAX_ATTEMPTS
        assert f"interrupted {MAX_ATTEMPTS} times" in view.error and "not retried again" in view.error
        # It was not run a third time; the engine serves the next job.
        nxt = (await client.submit(request(user="2"))).job.id
        assert (await wait_done(client, nxt, timeout=120)).state is JobState.SUCCEEDED
        assert len(marker.read_text().split()) == MAX_ATTEMPTS
    finally:
        engine.kill()
        kill_pids(marker)
        await client.close()


# --- event streams -------------------------------------------------------------------------------


async def test_a_filtered_event_stream_gets_keep_alives_while_other_jobs_events_flow(
    tmp_path: Path, monkeypatch
):
    import engine.service.api as api_module

    monkeypatch.setattr(api_module, "SSE_KEEPALIVE_S", 0.5)
    # No models: every job stays queued, so the watched job sends nothing after its QUEUED event.
    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, client):
        watched = (await client.submit(request(user="1"))).job.id
        lines: list[bytes] = []

        async def read() -> None:
            headers = {"Authorization": f"Bearer {SECRET}"}
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{svc.url}/v1/events", params={"job_id": watched}, headers=headers) as resp,
            ):
                async for line in resp.content:
                    lines.append(line)

        reader = asyncio.create_task(read())
        try:
            # Other jobs' events, every 0.1 s for 2.5 s: they wake the stream but are not its own.
            for i in range(25):
                other = (await client.submit(request(user=str(10 + i)))).job.id
                await client.cancel(other, actor_id=str(10 + i))
                await asyncio.sleep(0.1)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        assert lines.count(b": keep-alive\n") >= 3, lines


@needs_root
async def test_a_full_disk_during_the_mp4_write_is_disk_full_not_video(tmp_path: Path, tiny_models):
    data = tmp_path / "data"
    # No stills in the nightmare: the MP4 is the only write that meets the full disk.
    settings = make_settings(data, pipeline={"still_every": 1000})
    async with running_engine(settings, tiny_models) as (svc, client):
        first = (await client.submit(request(user="1"))).job.id
        assert (await wait_done(client, first, 120)).state is JobState.SUCCEEDED
        with tmpfs(svc.files.tmp, "64k"):
            with contextlib.suppress(OSError), open(svc.files.tmp / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            job = (await client.submit(request("nightmare", "n", user="1", frames=10))).job.id
            view = await wait_done(client, job, 120)
            assert view.state is JobState.FAILED and view.error_code == "disk_full", view.error
            assert "disk full" in view.error and str(svc.files.tmp) in view.error
            # Health says so (503, degraded) until a write fits again.
            assert await _degraded(client)
            (svc.files.tmp / "filler").unlink()
            assert (await client.health()).status == "ready"


@needs_root
async def test_a_job_that_meets_a_full_disk_is_recorded_once_space_is_back(tmp_path: Path, tiny_models):
    data = tmp_path / "data"
    with tmpfs(data, "8m"):
        settings = make_settings(data, limits={"max_steps": 1000})
        async with running_engine(settings, tiny_models) as (_, client):
            job = (await client.submit(request(user="1", steps=1000, scare_steps=0))).job.id
            await wait_for(lambda: _has_progress(client, job), 60, "the first step")
            filler = data / "filler"
            with contextlib.suppress(OSError), open(filler, "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            # The job's next write (a still, a progress row) meets the full disk and the job
            # ends; its outcome cannot be stored yet, and health says why.
            await wait_for(lambda: _degraded(client), 60, "health degraded")
            filler.unlink()
            view = await wait_done(client, job, 60)
            assert view.state is JobState.FAILED and view.error_code == "disk_full", view
            nxt = (await client.submit(request(user="2"))).job.id
            assert (await wait_done(client, nxt, 120)).state is JobState.SUCCEEDED


async def _has_progress(client: EngineClient, job_id: str) -> bool:
    return (await client.job(job_id)).progress is not None


async def _degraded(client: EngineClient) -> bool:
    health = await client.health()
    return health.status == "degraded" and "disk full" in (health.detail or "")


@pytest.mark.slow
async def test_kill_9_at_chosen_points_loses_nothing_and_every_engine_starts_again():
    """A few of benchmarks/kill_points.py's rounds (the full 20-kill run is the script itself)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kill_points

    # fit: a kill mid re-encode leaves a `spooky-fit-*` folder behind for the next start.
    args = argparse.Namespace(kills=4, points=["move", "submit", "fsync", "fit"], timeout=120)
    figures = await kill_points.main(args)
    assert figures["kills"] == 4 and figures["points_not_reached"] == [], figures
    assert figures["failed_starts"] == 0 and figures["lost"] == 0, figures
    assert figures["finished_twice"] == 0 and figures["event_ids_repeated"] == 0, figures
    assert figures["event_id_gaps"] == 0, figures


async def test_the_client_leaves_a_silent_stream_and_resumes_after_its_last_event(monkeypatch):
    """A stream that goes quiet without closing (a half-open connection, a proxy that swallowed the
    close): the client gives up on it after a few missed keep-alives and resumes with Last-Event-ID."""
    import spooky.engine_client as client_module

    monkeypatch.setattr(client_module, "_STREAM_READ_TIMEOUT_S", 0.5)
    monkeypatch.setattr(client_module, "_BACKOFF", (0.05, 2.0, 0.1))
    resumed: list[str | None] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        last = request.headers.get("Last-Event-ID")
        resumed.append(last)
        if last is None:
            event = Event(id=1, job_id="j" * 16, type=EventType.QUEUED)
            await resp.write(f"id: 1\nevent: queued\ndata: {event.model_dump_json()}\n\n".encode())
            await asyncio.sleep(3600)  # silent from here on, the connection left open
        event = Event(id=2, job_id="j" * 16, type=EventType.STARTED)
        await resp.write(f"id: 2\nevent: started\ndata: {event.model_dump_json()}\n\n".encode())
        await resp.write(b"event: end\ndata: {}\n\n")
        return resp

    app = web.Application()
    app.router.add_get("/v1/events", stream)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with EngineClient(f"http://127.0.0.1:{port}", SECRET) as client:
            started = time.monotonic()
            got = [e.id async for e in client.events()]
            took = time.monotonic() - started
    finally:
        await runner.cleanup()
    assert got == [1, 2]
    assert resumed == [None, "1"]
    assert took < 5, took
