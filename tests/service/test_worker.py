"""The worker for real on the tiny models: cancel, faults that fail one job only, event streams."""

from __future__ import annotations

import asyncio
import errno
import json
import time
from pathlib import Path

import aiohttp
import pytest
import torch
from service_helpers import SECRET, make_settings, request, running_engine
from testgate import StepGate

import engine.pipeline.render as render_module
import engine.service.artifacts as artifacts_module
from spooky.contract import Event, EventType, JobState
from spooky.engine_client import EngineClient, EngineRequestError

pytestmark = pytest.mark.slow


async def events_until_done(client: EngineClient, job_id: str, timeout: float = 120) -> list[Event]:
    """Every event of a job, up to its terminal one (the job's stream ends there)."""

    async def collect() -> list[Event]:
        return [e async for e in client.events(job_id=job_id)]

    return await asyncio.wait_for(collect(), timeout)


async def test_cancel_queued_and_running_jobs(tmp_path: Path, tiny_models, monkeypatch):
    gate = StepGate.create(tmp_path / "gate")  # holds the long job after its first step
    settings = make_settings(tmp_path / "engine")
    async with running_engine(settings, tiny_models, step_hook=gate.engine_side()) as (_, client):
        long = (await client.submit(request(user="1", steps=5, scare_steps=0))).job
        waiting = (await client.submit(request(user="2"))).job
        after = (await client.submit(request(user="3"))).job
        stream = client.events(job_id=long.id)
        seen = []
        async for event in stream:
            seen.append(event)
            if event.type is EventType.PROGRESS:
                break
        await gate.held(passed=0)
        with pytest.raises(EngineRequestError) as e:
            await client.cancel(long.id, actor_id="3")  # not the owner, not a moderator
        assert e.value.status == 403 and e.value.body.error.code == "forbidden"

        moderated = await client.cancel(waiting.id, actor_id="9", is_moderator=True)
        assert moderated.state is JobState.CANCELLED and moderated.error == "cancelled by 9"

        stopped = await client.cancel(long.id, actor_id="1")
        assert stopped.state is JobState.CANCELLED
        gate.release()  # the rest of the queue runs freely
        rest = [e async for e in stream]
        await stream.aclose()
        cancelled = rest[-1]
        assert cancelled.type is EventType.CANCELLED and cancelled.data["by"] == "1"
        # Stopped where it was held: no step after the cancel, the step it stopped at is reported.
        progress = [e for e in seen + rest if e.type is EventType.PROGRESS]
        assert [e.data["step"] for e in progress] == [1]
        assert cancelled.data["step"] == 1 and cancelled.data["stage"] == "stylegan"
        assert stopped.progress is not None and stopped.progress.step == 1

        with pytest.raises(EngineRequestError) as e:
            await client.cancel(long.id, actor_id="1")
        assert e.value.status == 409 and e.value.body.error.code == "finished"

        # The queue moved on: the cancelled waiting job never started, the next one ran.
        waited = await events_until_done(client, waiting.id)
        assert [e.type for e in waited] == [EventType.QUEUED, EventType.CANCELLED]
        done = await events_until_done(client, after.id)
        assert done[-1].type is EventType.FINISHED
        assert (await client.job(after.id)).state is JobState.SUCCEEDED


async def test_oom_disk_full_and_timeout_fail_only_their_job(tmp_path: Path, tiny_models, monkeypatch):
    gate = StepGate.create(tmp_path / "gate", open=True)  # closed only for the time-out below
    settings = make_settings(tmp_path / "engine")
    async with running_engine(settings, tiny_models, step_hook=gate.engine_side()) as (svc, client):
        # A stage that runs out of GPU memory.
        real_scare = render_module.scare

        def scare_oom(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("simulated")

        monkeypatch.setattr(render_module, "scare", scare_oom)
        oom = (await client.submit(request(user="1"))).job
        events = await events_until_done(client, oom.id)
        assert events[-1].type is EventType.FAILED and events[-1].data["code"] == "oom"
        failed = await client.job(oom.id)
        assert failed.state is JobState.FAILED and failed.error_code == "oom"
        assert "out of GPU memory at stage 'scare'" in failed.error
        assert "try fewer cutouts/smaller size" in failed.error
        monkeypatch.setattr(render_module, "scare", real_scare)

        # A full disk while a still is written.
        def no_space(path, data):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(artifacts_module, "write_file", no_space)
        full = (await client.submit(request(user="2"))).job
        events = await events_until_done(client, full.id)
        failed = await client.job(full.id)
        assert failed.state is JobState.FAILED and failed.error_code == "disk_full"
        assert "disk full" in failed.error and events[-1].data["code"] == "disk_full"
        health = await client.health()
        assert health.status == "degraded" and "disk full" in health.detail
        monkeypatch.undo()

        # A job over the time limit: held after step 1 while its deadline passes, then let go.
        gate.hold()
        slow = (await client.submit(request(user="3", steps=40))).job
        await gate.held()
        svc.worker.control.deadline = time.monotonic()  # its time is up while it waits at the gate
        gate.release()
        await events_until_done(client, slow.id)
        failed = await client.job(slow.id)
        limit = f"{svc.settings.engine.job_timeout_s:g} s (engine.job_timeout_s)"
        assert failed.error_code == "timeout", failed.error
        assert failed.error == f"timed out after {limit} at stage 'stylegan' (step 2/40)"

        # The engine carries on: the next job succeeds and the disk-full notice is gone.
        ok = (await client.submit(request(user="4"))).job
        await events_until_done(client, ok.id)
        done = await client.job(ok.id)
        assert done.state is JobState.SUCCEEDED, done.error
        assert set(done.artifacts) >= {"stylegan", "spooky"}
        assert done.result["seed"] == done.result["settings"]["seed"]
        health = await client.health()
        assert health.status == "ready" and health.detail is None

        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{svc.url}/metrics", headers={"Authorization": f"Bearer {SECRET}"}) as resp,
        ):
            text = await resp.text()
        for outcome in ("oom", "disk_full", "timeout", "succeeded"):
            assert f'spooky_jobs_total{{kind="spooky",outcome="{outcome}"}} 1.0' in text
        assert 'spooky_stage_seconds_count{stage="stylegan"}' in text


async def _read_sse(resp: aiohttp.ClientResponse, limit: int | None = None) -> list[dict]:
    """Parse events from an open SSE response; stop after `limit` events or at `event: end`."""
    out: list[dict] = []
    kind, data = None, None
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data is not None:
            if kind == "end":
                return out
            out.append(json.loads(data))
            kind, data = None, None
            if limit is not None and len(out) >= limit:
                return out
    return out


async def test_event_stream_resumes_after_a_disconnect_without_gaps_or_repeats(
    tmp_path: Path, tiny_models, monkeypatch
):
    gate = StepGate.create(tmp_path / "gate")  # the job waits after step 1 until the stream resumed
    settings, hook = make_settings(tmp_path / "engine"), gate.engine_side()
    async with running_engine(settings, tiny_models, step_hook=hook) as (svc, client):
        job = (await client.submit(request(steps=4, scare_steps=2))).job
        headers = {"Authorization": f"Bearer {SECRET}"}
        url = f"{svc.url}/v1/events?job_id={job.id}"
        await gate.held(passed=0)
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers=headers) as resp:
                first = await _read_sse(resp, limit=3)  # then drop the connection mid-job
            assert [e["type"] for e in first] == ["queued", "started", "progress"]
            resumed_headers = {**headers, "Last-Event-ID": str(first[-1]["id"])}
            async with http.get(url, headers=resumed_headers) as resp:
                gate.release()  # the rest of the job happens while the resumed stream is open
                second = await _read_sse(resp)
        full = await events_until_done(client, job.id)
        assert [Event.model_validate(e) for e in first + second] == full
        assert [e.type for e in full][:2] == [EventType.QUEUED, EventType.STARTED]
        assert [e.type for e in full][-1] is EventType.FINISHED
        progress = [e for e in full if e.type is EventType.PROGRESS]
        assert [(e.data["stage"], e.data["step"]) for e in progress] == [
            ("stylegan", 1), ("stylegan", 2), ("stylegan", 3), ("stylegan", 4), ("scare", 1), ("scare", 2),
        ]  # fmt: skip
        stills = [e.data["still"] for e in progress if e.data["still"]]
        assert len(stills) >= 2
        for still in stills:
            assert (await client.artifact(still)).startswith(b"\x89PNG")
        # `after` resumes the same way, and a guild filter sees only that guild.
        tail = [e async for e in client.events(job_id=job.id, after=full[4].id)]
        assert tail == full[5:]
        other = (await client.submit(request(user="5", guild="999", steps=1, scare_steps=0))).job
        await events_until_done(client, other.id)
        guild_stream = client.events(guild_id="100")
        seen = []
        async for event in guild_stream:
            seen.append(event)
            if event.id == full[-1].id:
                break
        await guild_stream.aclose()
        assert seen == full and all(e.guild_id == "100" for e in seen)


async def test_retention_keeps_last_images_and_the_last_image_survives_a_restart(tmp_path: Path, tiny_models):
    settings = make_settings(tmp_path)
    async with running_engine(settings, tiny_models) as (_, client):
        job = (await client.submit(request(user="1", channel="2"))).job
        await events_until_done(client, job.id)
        done = await client.job(job.id)
        assert done.state is JobState.SUCCEEDED
        last = await client.last_image("1", "2")
        assert last.artifact_id == done.artifacts["spooky"] and last.job_id == job.id
        png = await client.artifact(done.artifacts["stylegan"])
        upload = await client.upload(png, user_id="1", channel_id="2")
        kept_upload = await client.upload(png, user_id="3", channel_id="2")
    # After a restart the last image is still known.
    async with running_engine(settings, autoload=False) as (svc, client):
        assert (await client.last_image("1", "2")).artifact_id == done.artifacts["spooky"]
        # A waiting nightmare keeps its input; a nightmare without one uses the last image.
        from_upload = await client.submit(
            request("nightmare", "nightmare", user="3", init_artifact=kept_upload.id)
        )
        from_last = await client.submit(request("nightmare", "nightmare", user="1", channel="2"))
        assert from_last.job.artifacts["source"] == done.artifacts["spooky"]
        svc.settings.engine.artifact_retention_hours = 1e-9  # everything is old now
        await svc.core.sweep()
        assert await client.artifact(done.artifacts["spooky"])  # the last image stays
        assert await client.artifact(kept_upload.id)  # input of a waiting job stays
        for gone in (done.artifacts["stylegan"], done.artifacts["still"], upload.id):
            with pytest.raises(EngineRequestError) as e:
                await client.artifact(gone)
            assert e.value.status == 404
        files = {p.stem for p in (tmp_path / "artifacts").rglob("*.png")}
        assert files == {done.artifacts["spooky"], kept_upload.id}
        assert from_upload.job.state is JobState.QUEUED


async def test_the_renderer_checks_prompts_and_sizes_at_submit(tmp_path: Path, tiny_models):
    from spooky.contract import RefusalCode
    from spooky.engine_client import EngineRefused

    async with running_engine(make_settings(tmp_path), tiny_models) as (_, client):
        cases = [
            (request(prompt=" ".join(["fang"] * 100)), RefusalCode.BAD_PROMPT, "CLIP tokens"),
            (request(scare_prompt="a ghost:inf"), RefusalCode.BAD_PROMPT, "weight"),
            (request(size=(63, 64)), RefusalCode.OUT_OF_RANGE, "63"),
        ]
        for req, code, word in cases:
            with pytest.raises(EngineRefused) as e:
                await client.submit(req)
            assert e.value.refusal.code is code and e.value.status == 422, e.value.refusal
            assert word in e.value.refusal.message
        assert await client.jobs() == []


async def test_a_stored_spec_this_release_cannot_read_fails_that_job_only(tmp_path: Path, tiny_models):
    import sqlite3

    settings = make_settings(tmp_path)
    async with running_engine(settings, tiny_models, autoload=False) as (svc, client):
        bad = (await client.submit(request(user="1"))).job
        good = (await client.submit(request(user="2"))).job
        # As a newer release (or a hand edit) might leave it: a field this release does not know.
        con = sqlite3.connect(svc.store.path)
        with con:
            con.execute("UPDATE jobs SET spec = json_set(spec, '$.lora', 'x') WHERE id = ?", (bad.id,))
        con.close()
        queue = await client.queue()  # positions and ETAs are planned over the unreadable row too
        assert [j.id for j in queue.jobs] == [bad.id, good.id]
        svc.start_models()
        await events_until_done(client, bad.id)
        failed = await client.job(bad.id)
        assert failed.state is JobState.FAILED and failed.error_code == "bad_spec"
        assert f"job {bad.id} cannot run" in failed.error and "lora" in failed.error
        await events_until_done(client, good.id)
        done = await client.job(good.id)
        assert done.state is JobState.SUCCEEDED, done.error


async def test_a_lost_lease_stops_the_job_at_once_and_nothing_more_is_written(tmp_path: Path, tiny_models):
    """The renewal that finds another attempt holding the job stops it within a renewal period,
    even while no step writes anything (here: held at the gate), and the attempt writes no more."""
    gate = StepGate.create(tmp_path / "gate")
    settings = make_settings(tmp_path / "engine", engine={"lease_s": 1})
    async with running_engine(settings, tiny_models, step_hook=gate.engine_side()) as (svc, client):
        job = (await client.submit(request(steps=5, scare_steps=0))).job
        await gate.held(passed=0)
        with svc.store._write() as con:  # another attempt took the job (its lease had lapsed)
            con.execute("UPDATE jobs SET attempts = attempts + 1 WHERE id = ?", (job.id,))
        last = svc.store.last_event_id()
        async with asyncio.timeout(5):
            while (await client.health()).running_job is not None:
                await asyncio.sleep(0.05)
        assert not gate.state.waiting and gate.state.passed == 0
        assert [e for e in svc.store.events_after(last) if e.job_id == job.id] == []
        view = await client.job(job.id)
        assert view.state is JobState.RUNNING and view.progress.step == 1  # as the other attempt has it
        samples = svc.core.metrics.jobs.labels("spooky", "lease_lost")._value.get()
        assert samples == 1
