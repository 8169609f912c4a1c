"""A small render farm of real `spooky engine` processes on a real PostgreSQL server.

One API node (role api: no torch) and tiny-preset workers (role worker), each with its own step
gate (farm_helpers.py). Leases are short (3 s) so a lapse is seen in seconds; every wait on a job
is on the gate or on the store's state, never on a step being slow.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from farm_helpers import ROOT, Node, held_at, idle, streamed, terminal, until, write_config
from service_helpers import request
from testgate import StepGate

from spooky.contract import Event, EventType, JobState
from spooky.engine_client import EngineRefused, EngineUnavailable

pytestmark = pytest.mark.slow


async def test_api_role_refuses_sqlite_and_imports_no_torch(tmp_path: Path, pg_url: str):
    cfg = write_config(tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_")}
    refused = subprocess.run(
        [sys.executable, "-m", "spooky.cli", "engine", "--config", str(cfg), "--role", "worker"],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "database_url" in refused.stderr, refused.stderr
    # An API node on PostgreSQL, as `spooky engine --role api` builds it: it accepts a submit,
    # refuses a prompt CLIP cannot take, and torch never entered the process.
    script = f"""
import asyncio, sys
from pathlib import Path
from engine.service.app import EngineService
from spooky.config import load_settings
from spooky.engine_client import EngineClient, EngineRefused
sys.path.insert(0, {str(ROOT / "tests" / "service")!r})
from service_helpers import SECRET, request

async def main():
    settings = load_settings(Path({str(cfg)!r}))
    async with EngineService(settings, port=0) as service:
        assert service.core.status == "ready"
        async with EngineClient(service.url, SECRET) as client:
            job = (await client.submit(request(user="1"))).job
            assert job.state.value == "queued"
            try:
                await client.submit(request(user="2", prompt="ghost " * 80))
            except EngineRefused as e:
                print("refused", e.refusal.code.value, e.refusal.message)
            # An upload is checked (decoded, re-encoded) here too, and metrics are served.
            import io
            from PIL import Image
            png = io.BytesIO()
            Image.new("RGB", (8, 8)).save(png, "PNG")
            uploaded = await client.upload(png.getvalue(), user_id="3", channel_id="200")
            print("uploaded", uploaded.width, uploaded.height)
            async with client._http().get(
                service.url + "/metrics", headers={{"Authorization": "Bearer " + SECRET}}
            ) as resp:
                print("metrics", resp.status)
    heavy = ("torch", "open_clip", "numpy", "engine.models.factory", "engine.pipeline.render")
    heavy = sorted(m for m in heavy if m in sys.modules)
    print("heavy", heavy)

asyncio.run(main())
"""
    env = {**base, "SPOOKY_DATABASE_URL": pg_url, "SPOOKY_ENGINE__ROLE": "api", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "refused bad_prompt the prompt is 80 CLIP tokens long" in out.stdout, out.stdout + out.stderr
    assert "uploaded 8 8" in out.stdout and "metrics 200" in out.stdout, out.stdout + out.stderr
    assert "heavy []" in out.stdout, out.stdout


async def test_workers_drain_fairly_a_killed_one_is_replaced_and_a_stopped_one_writes_nothing(
    tmp_path: Path, pg_url: str
):
    api = Node(tmp_path, "api", pg_url, "api")
    gates = [StepGate.create(tmp_path / f"gate{i}", open=True) for i in range(3)]
    workers: list[Node] = []
    events: list[Event] = []
    try:
        await api.wait_ready()

        async def collect() -> None:
            async for event in api.client.events():  # streamed by the API node, written by workers
                events.append(event)

        collector = asyncio.create_task(collect())
        # 1. A mixed queue from several users, waiting before any worker runs: the claims must
        # follow the fair order (round-robin by user), whichever worker makes them.
        order = ["1", "1", "1", "2", "2", "3", "4"]
        ids = []
        for n, user in enumerate(order):
            spec = {"steps": 1 + n % 3, "scare_steps": n % 2}
            ids.append((await api.client.submit(request(user=user, **spec))).job.id)
        workers = [Node(tmp_path, "worker", pg_url, f"worker{i}", gate=gates[i]) for i in range(3)]
        await asyncio.gather(*(w.wait_ready() for w in workers))

        async def all_done() -> bool:
            return all([(await api.client.job(j)).state.terminal for j in ids])

        await until("the first queue drains", all_done)
        views = [await api.client.job(j) for j in ids]
        assert all(v.state is JobState.SUCCEEDED and v.attempts == 1 for v in views), [v.error for v in views]
        await until("every FINISHED event streamed", lambda: streamed(events, ids))
        claims = [e.job_id for e in events if e.type is EventType.STARTED and e.job_id in ids]
        fair = [ids[i] for i in (0, 3, 5, 6, 1, 4, 2)]  # users 1 2 3 4, then 1 2, then 1
        assert claims == fair  # each job started once, in fair order
        # The API node serves what a worker wrote, from the shared folder.
        assert (await api.client.artifact(views[0].artifacts["spooky"]))[:4] == b"\x89PNG"

        # 2. kill -9 of the worker that holds a job: after its lease lapses another worker runs it.
        for gate in gates:
            gate.hold()
        killed_job = (await api.client.submit(request(user="5", steps=3, scare_steps=0))).job.id
        holder = await until("a worker holds the job", lambda: held_at(gates, killed_job))
        workers[holder].proc.kill()
        gates[holder].release()
        others = [g for i, g in enumerate(gates) if i != holder]
        second = await until("another worker holds the job", lambda: held_at(others, killed_job))
        second_gate = others[second]
        second_gate.release()
        await until("the killed worker's job finishes", lambda: terminal(api.client, killed_job))
        view = await api.client.job(killed_job)
        assert view.state is JobState.SUCCEEDED and view.attempts == 2, view.error
        await until("its FINISHED event streamed", lambda: streamed(events, [killed_job]))
        mine = [e.type for e in events if e.job_id == killed_job]
        assert mine.count(EventType.FINISHED) == 1 and mine.count(EventType.STARTED) == 2
        assert mine[mine.index(EventType.INTERRUPTED) + 1] is EventType.STARTED

        # 3. SIGSTOP the worker that holds a job past its lease; another finishes the job; SIGCONT:
        # the stopped worker writes nothing more for it (no progress, no second outcome).
        alive = [i for i in range(3) if i != holder]
        for i in alive:
            gates[i].hold()
        stopped_job = (await api.client.submit(request(user="6", steps=3, scare_steps=0))).job.id
        first = alive[
            await until("a worker holds it", lambda: held_at([gates[i] for i in alive], stopped_job))
        ]
        workers[first].signal(signal.SIGSTOP)
        replacement = next(i for i in alive if i != first)
        await until(
            "the lease lapses and the other worker holds it",
            lambda: held_at([gates[replacement]], stopped_job),
        )
        gates[replacement].release()
        await until("the other worker finishes it", lambda: terminal(api.client, stopped_job))
        done = await api.client.job(stopped_job)
        assert done.state is JobState.SUCCEEDED and done.attempts == 2
        gates[first].release()  # it may step on: every write it tries is fenced
        workers[first].signal(signal.SIGCONT)
        await until("the resumed worker lets go of the job", lambda: idle(workers[first]), 60)
        # It is healthy again and takes new work; the finished job is as the other worker left it.
        follow = (await api.client.submit(request(user="7"))).job.id
        await until("a later job finishes", lambda: terminal(api.client, follow))
        # Anything the resumed worker wrote was written before it let go, so before this event.
        await until("the later job's FINISHED streamed", lambda: streamed(events, [follow]))
        after = await api.client.job(stopped_job)
        assert after.model_dump(exclude={"position", "eta_s"}) == done.model_dump(
            exclude={"position", "eta_s"}
        )
        late = [
            e
            for e in events
            if e.job_id == stopped_job
            and e.id > max(x.id for x in events if x.job_id == stopped_job and x.type is EventType.FINISHED)
        ]
        assert late == []
        assert Counter(e.type for e in events if e.job_id == stopped_job)[EventType.FINISHED] == 1
        assert await workers[first].metric('spooky_jobs_total{kind="spooky",outcome="lease_lost"}') == 1

        # 4. A cancel sent to the API node stops the job on whichever worker holds it.
        for i in alive:
            gates[i].hold()
        cancelled = (await api.client.submit(request(user="8", steps=3, scare_steps=0))).job.id
        await until("a worker holds it", lambda: held_at([gates[i] for i in alive], cancelled))
        view = await api.client.cancel(cancelled, "8")
        assert view.state is JobState.CANCELLED, view

        # 5. The stream the API node served, across all of this, missed nothing and repeated
        # nothing: a fresh reader from the start sees the same events.
        await until("the cancel streamed", lambda: streamed(events, [cancelled], EventType.CANCELLED))
        collector.cancel()
        replay: list[Event] = []
        async for event in api.client.events():
            replay.append(event)
            if event.id >= events[-1].id:
                break
        assert [e.id for e in events] == sorted({e.id for e in events})
        assert replay == events
    finally:
        for node in [*workers, api]:
            await node.close()


async def test_limits_stay_exact_with_200_concurrent_submits_across_two_api_nodes(
    tmp_path: Path, pg_url: str
):
    nodes = [Node(tmp_path, "api", pg_url, f"api{i}") for i in range(2)]
    try:
        await asyncio.gather(*(n.wait_ready() for n in nodes))
        await nodes[0].client.update_limits("100", "9", {"max_queue_per_server": 50, "max_jobs_per_user": 3})

        async def one(n: int) -> str:
            node = nodes[n % 2]  # alternate: every second submit arrives at the other node
            try:
                await node.client.submit(request(user=str(1000 + n % 40)))
                return "accepted"
            except EngineRefused as e:
                return e.refusal.code.value

        outcomes = Counter(await asyncio.gather(*(one(n) for n in range(200))))
        assert outcomes["accepted"] == 50, outcomes
        assert set(outcomes) <= {"accepted", "server_queue_full", "user_limit"}, outcomes
        queued = await nodes[1].client.jobs(state=JobState.QUEUED, limit=1000)
        assert len(queued) == 50
        assert max(Counter(j.request.requester.user_id for j in queued).values()) <= 3
    finally:
        for node in nodes:
            await node.close()


async def test_a_postgresql_restart_is_survived_503_meanwhile_nothing_lost(
    tmp_path: Path, pg_server: Any, pg_url: str
):
    api = Node(tmp_path, "api", pg_url, "api")
    try:
        await api.wait_ready()
        before = [(await api.client.submit(request(user=str(u)))).job.id for u in range(3)]
        pg_server.stop("fast")
        try:
            with pytest.raises(EngineUnavailable, match="HTTP 503"):
                await api.client.submit(request(user="7"))
            health = await api.client.health()
            assert health.status == "degraded" and "PostgreSQL" in (health.detail or ""), health
        finally:
            pg_server.start(pg_server.port)

        async def accepted() -> str | None:
            try:
                return (await api.client.submit(request(user="8", idempotency_key="after-restart"))).job.id
            except EngineUnavailable:
                return None  # its connection is re-opened on the next call

        after = await until("the API accepts again", accepted, 60)
        assert (await api.client.health()).status == "ready"
        views = [await api.client.job(j) for j in [*before, after]]
        assert all(v.state is JobState.QUEUED for v in views)
        assert {j.id for j in await api.client.jobs(limit=100)} == {*before, after}
    finally:
        await api.close()


async def test_a_sharded_bot_asks_only_for_its_own_servers_jobs(tmp_path: Path, pg_url: str):
    from bot.tracker import Shards

    api = Node(tmp_path, "api", pg_url, "api")
    try:
        await api.wait_ready()
        guilds = [str((n * 7919 + 3) << 22 | n) for n in range(12)]
        for g in guilds:
            await api.client.submit(request(user="1" + g[-3:], guild=g))
        await api.client.submit(request(user="5", guild=None))  # a direct message: shard 0
        for ids in ([0], [1, 3], [2]):
            mine = Shards(4, ids)
            got = await api.client.jobs(undelivered=True, shards=(4, ids), limit=100)
            everything = await api.client.jobs(undelivered=True, limit=100)
            assert {j.id for j in got} == {
                j.id for j in everything if mine.runs(j.request.requester.guild_id)
            }
            assert got
    finally:
        await api.close()
