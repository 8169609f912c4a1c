"""The farm under the faults an operator meets every week, on real processes and a real PostgreSQL:
a database restart shorter than the lease, and a worker paused past its lease.

The nodes are `spooky engine --role …` child processes (farm_helpers.py); the bot is the real
discord.py client against the local fake Discord, following the API node's event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from bot_helpers import final_of, job_of, probe_video
from fake_discord.server import FakeDiscord
from farm_helpers import Node, held_at, idle, terminal, until
from PIL import Image
from service_helpers import SECRET
from testgate import StepGate

from bot.app import SpookyBot
from spooky.config import Settings
from spooky.contract import Event, EventType, JobKind, JobRequest, JobState, Requester
from spooky.engine_client import EngineClient

pytestmark = pytest.mark.slow

#: Long enough that a 5 s outage is well inside it, as an operator would set it.
OUTAGE_LEASE_S = 20
OUTAGE_S = 5.0


def noise_png(side: int = 64) -> bytes:
    rnd = random.Random(side)
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), rnd.randbytes(side * side * 3)).save(buf, "PNG")
    return buf.getvalue()


async def start_bot(
    fake: FakeDiscord, engine_url: str, data_dir: Path
) -> tuple[SpookyBot, asyncio.Task[None]]:
    settings = Settings.model_validate(
        {
            "bot": {
                "token": fake.bot_token,
                "engine_url": engine_url,
                "api_base": fake.api_base,
                "gateway_url": fake.gateway_url,
                "data_dir": str(data_dir),
            },
            "engine": {"secret": SECRET},
        }
    )
    bot = SpookyBot(settings, EngineClient(engine_url, SECRET, timeout=5.0))
    task = asyncio.create_task(bot.start(fake.bot_token))
    async with asyncio.timeout(60):
        while not fake.ready_sent or not fake.commands:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    return bot, task


async def stop_bot(bot: SpookyBot, task: asyncio.Task[None]) -> None:
    await bot.close()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await bot.engine.close()


async def held_at_step(gate: StepGate, step: int) -> bool:
    state = gate.state
    return state.waiting and state.step == step


async def test_a_database_restart_shorter_than_the_lease_costs_no_job_an_attempt(
    tmp_path: Path, pg_server: Any, pg_url: str
):
    """PostgreSQL stops (-m immediate) for 5 s while a nightmare renders with lease_s = 20: the
    render goes on through it, the job succeeds with attempt 1, a stream open across the outage
    gets every event, the member's message shows the video soon after the restart, and each node
    logs the outage once, without a traceback."""
    api = Node(tmp_path, "api", pg_url, "api", lease_s=OUTAGE_LEASE_S)
    gates = [StepGate.create(tmp_path / f"gate{i}") for i in range(2)]  # closed
    workers = [
        Node(tmp_path, "worker", pg_url, f"worker{i}", gate=gates[i], lease_s=OUTAGE_LEASE_S)
        for i in range(2)
    ]
    nodes = [api, *workers]
    fake = FakeDiscord()
    await fake.start()
    bot_task: tuple[SpookyBot, asyncio.Task[None]] | None = None
    events: list[Event] = []
    collector: asyncio.Task[None] | None = None
    try:
        await asyncio.gather(*(n.wait_ready() for n in nodes))
        bot_task = await start_bot(fake, f"http://127.0.0.1:{api.port}", tmp_path / "bot")

        async def collect() -> None:
            async for event in api.client.events():  # resumes with Last-Event-ID by itself
                events.append(event)

        collector = asyncio.create_task(collect())
        image = fake.add_attachment("face.png", "image/png", noise_png())
        inter = await fake.invoke("nightmare", {"image": image, "frames": 12})
        job = await job_of(api.client, inter)
        i = await until("a worker holds the nightmare", lambda: held_at(gates, job.id))
        gate = gates[i]
        gate.allow(2)
        await until("it reached frame 3", lambda: held_at_step(gate, 3))

        pg_server.stop("immediate")
        stopped = time.monotonic()
        try:
            # The render goes on while the database is down: four more frames, none of them stored.
            gate.allow(4)
            await until("it rendered on to frame 7", lambda: held_at_step(gate, 7), OUTAGE_S * 4)
            health = await workers[i].client.health()
            assert health.status == "degraded" and "PostgreSQL" in (health.detail or ""), health
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
        finally:
            pg_server.start(pg_server.port)
        restarted = time.monotonic()
        gate.release()

        await until("the job finishes", lambda: terminal(api.client, job.id), 120)
        view = await api.client.job(job.id)
        assert view.state is JobState.SUCCEEDED and view.attempts == 1, (
            view.state,
            view.attempts,
            view.error,
        )
        final = await fake.wait_for(lambda: final_of(fake, inter, job.id), 60)
        shown = time.monotonic() - restarted
        assert [a["filename"] for a in final["attachments"]] == ["nightmare.mp4"], final["content"]
        codec, frames, _ = probe_video(fake.files[final["attachments"][0]["id"]])
        assert (codec, frames) == ("h264", 12)

        # Every event of the job reached the stream that was open across the outage, once, in
        # order: the same as a fresh reader from the start sees.
        await until("the FINISHED event streamed", lambda: _has(events, job.id, EventType.FINISHED), 30)
        replay = [e async for e in _replay(api.client, events[-1].id)]
        mine = [e for e in events if e.job_id == job.id]
        assert mine == [e for e in replay if e.job_id == job.id]
        assert [e.type for e in mine].count(EventType.STARTED) == 1
        assert EventType.INTERRUPTED not in [e.type for e in mine]
        assert [e.id for e in events] == sorted({e.id for e in events})
        # Progress resumed after the restart: frames past 7 were reported.
        assert max(e.data["step"] for e in mine if e.type is EventType.PROGRESS) > 7
        print(
            f"\noutage {OUTAGE_S:g} s: the video was in the member's message {shown:.1f} s after the restart"
        )
        assert shown < 15, shown  # the last frames, the encode and the post, on a busy machine too

        # One warning when it went, one line when it came back, on every node; no traceback.
        for node in nodes:
            log = node.output()
            assert log.count("is unavailable (") == 1, (node.role, log[-3000:])
            assert log.count("answers again after") == 1, (node.role, log[-3000:])
            assert "Traceback" not in log, (node.role, log[-3000:])
            assert await node.metric("spooky_database_outages_total") == 1
            assert await node.metric("spooky_database_up") == 1
    finally:
        if collector is not None:
            collector.cancel()
        if bot_task is not None:
            await stop_bot(*bot_task)
        await fake.stop()
        for node in nodes:
            await node.close()


async def test_a_worker_paused_past_its_lease_leaves_the_live_attempts_video_alone(
    tmp_path: Path, pg_server: Any, pg_url: str
):
    """SIGSTOP the worker rendering a nightmare past its lease; another worker takes the job; the
    first resumes (SIGCONT) while the second is mid-video: the job succeeds exactly once, its MP4
    decodes, and the paused attempt left nothing behind (no file, no row, no event)."""
    api = Node(tmp_path, "api", pg_url, "api")
    gates = [StepGate.create(tmp_path / f"gate{i}") for i in range(2)]
    workers = [Node(tmp_path, "worker", pg_url, f"worker{i}", gate=gates[i]) for i in range(2)]
    nodes = [api, *workers]
    events: list[Event] = []
    collector: asyncio.Task[None] | None = None
    try:
        await asyncio.gather(*(n.wait_ready() for n in nodes))

        async def collect() -> None:
            async for event in api.client.events():
                events.append(event)

        collector = asyncio.create_task(collect())
        source = await api.client.upload(noise_png(), user_id="9", channel_id="200")
        req = JobRequest(
            kind=JobKind.NIGHTMARE,
            prompt="nightmare",
            frames=8,
            init_artifact=source.id,
            requester=Requester(user_id="9", channel_id="200", guild_id="100"),
        )
        job = (await api.client.submit(req)).job
        first = await until("a worker holds it", lambda: held_at(gates, job.id))
        other = 1 - first
        gates[first].allow(2)  # a few frames into its scratch MP4
        await until("frame 3", lambda: held_at_step(gates[first], 3))
        workers[first].signal(signal.SIGSTOP)
        await until(
            "the lease lapses and the other worker holds it", lambda: held_at([gates[other]], job.id), 60
        )
        gates[other].allow(2)
        await until("the live attempt is at frame 3", lambda: held_at_step(gates[other], 3))
        gates[first].release()  # it may step on once resumed: everything it tries is fenced
        workers[first].signal(signal.SIGCONT)
        await until("the resumed worker lets go of the job", lambda: idle(workers[first]), 60)
        gates[other].release()
        await until("the live attempt finishes", lambda: terminal(api.client, job.id), 120)

        view = await api.client.job(job.id)
        assert view.state is JobState.SUCCEEDED and view.attempts == 2, (view.state, view.error)
        codec, frames, _ = probe_video(await api.client.artifact(view.artifacts["video"]))
        assert (codec, frames) == ("h264", 8)
        await until("the FINISHED event streamed", lambda: _has(events, job.id, EventType.FINISHED), 30)
        mine = [e for e in events if e.job_id == job.id]
        assert [e.type for e in mine].count(EventType.FINISHED) == 1
        # Nothing of attempt 1 after attempt 2 started: every later event is attempt 2's.
        second_start = max(e.id for e in mine if e.type is EventType.STARTED)
        after = [e for e in mine if e.id > second_start]
        progress = [e.data["step"] for e in after if e.type is EventType.PROGRESS]
        assert progress == list(range(1, 9)), progress
        # Every file in the shared folder is an indexed artifact; no scratch file is left.
        shared = tmp_path / "shared-artifacts"
        files = {p.stem for p in shared.rglob("*") if p.is_file() and p.parent.name != "tmp"}
        assert not list((shared / "tmp").iterdir())
        rows = {a for a in files if await _artifact_exists(api.client, a)}
        assert rows == files, files - rows
        assert await workers[first].metric('spooky_jobs_total{kind="nightmare",outcome="lease_lost"}') == 1
    finally:
        if collector is not None:
            collector.cancel()
        for node in nodes:
            await node.close()


async def _has(events: list[Event], job_id: str, type_: EventType) -> bool:
    return any(e.job_id == job_id and e.type is type_ for e in events)


async def _replay(client: EngineClient, last: int) -> Any:
    async for event in client.events():
        yield event
        if event.id >= last:
            return


async def _artifact_exists(client: EngineClient, artifact_id: str) -> bool:
    from spooky.engine_client import EngineRequestError

    try:
        await client.artifact(artifact_id)
    except EngineRequestError as e:
        if e.status == 404:
            return False
        raise
    return True
