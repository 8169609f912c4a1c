"""The farm's own costs, on PostgreSQL beside SQLite: submits, claims, jobs per minute, events.

    python benchmarks/bench_farm.py                 # both stores
    python benchmarks/bench_farm.py --jobs 40       # more jobs per throughput run

What runs: real API nodes (`EngineService` without models in a child process each: role api on
PostgreSQL, the embedded engine's API on SQLite) and a real PostgreSQL server started like the
test suite's (tests/pgserver.py). The workers are NOT the renderer: each is a thread here with its
own store connection that does exactly what `Worker` does to the store (claim with a lease,
renew, one progress event per step, a fenced finish) and sleeps STEP_S per step instead of
rendering, so the jobs-per-minute figure measures the farm (queue, claims, events, fencing), not
these CPUs. It is only in this script: no engine setting can select it.

Figures: submit p50/p99 under 100 concurrent submits (one and two API nodes); claim latency
(claim_next with a full queue, p50/p99); jobs per minute with 1, 2 and 4 workers (ideal:
60 / (STEPS * STEP_S) per worker); event delivery latency from the worker's commit to an SSE
reader on an API node (PostgreSQL: NOTIFY wakes it; SQLite: one process owns the file, a second
process's commits are seen at the stream's 15 s keep-alive, so that figure is not measured).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "tests"))

from engine.service.store import JobStore, open_store  # noqa: E402
from spooky.contract import EventType, JobKind, JobRequest, JobState, Requester  # noqa: E402
from spooky.engine_client import EngineClient, EngineUnavailable  # noqa: E402

SECRET = "bench-farm-secret"
STEPS = 5
STEP_S = 0.1
LEASE_S = 30.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(folder: Path) -> Path:
    cfg = folder / "config.toml"
    cfg.write_text(
        f"""
[engine]
secret = "{SECRET}"
data_dir = "{folder / "data"}"
max_queue = 100000

[models]
preset = "tiny"

[limits]
cooldown_s = 0
max_jobs_per_user = 100
max_queue_per_server = 1000
""",
        encoding="utf-8",
    )
    return cfg


def request(n: int, guild: str = "100") -> JobRequest:
    return JobRequest(
        kind=JobKind.SPOOKY,
        prompt="dracula pale fangs",
        requester=Requester(user_id=str(1000 + n), guild_id=guild, channel_id="200"),
        steps=STEPS,
        scare_steps=0,
    )


# --- the API node (child process) -------------------------------------------------------------


def serve_api(cfg: Path, port: int) -> None:
    """An API node without models: role api on PostgreSQL, the embedded engine's API on SQLite."""
    from engine.service.app import EngineService
    from spooky.config import load_settings

    async def main() -> None:
        service = EngineService(load_settings(cfg), port=port, autoload=False)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await service.start()
        await stop.wait()
        await service.stop()

    asyncio.run(main())


class ApiNode:
    def __init__(self, cfg: Path, url: str, role: str) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_")}
        env.update({"SPOOKY_DATABASE_URL": url, "SPOOKY_ENGINE__ROLE": role, "PYTHONPATH": str(HERE)})
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-api", str(cfg), str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = EngineClient(f"http://127.0.0.1:{self.port}", SECRET, timeout=60)

    async def up(self) -> None:
        for _ in range(600):
            try:
                await self.client.health()
                return
            except EngineUnavailable:
                await asyncio.sleep(0.1)
        raise RuntimeError("API node did not come up")

    async def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.proc.wait, 30)
        await self.client.close()


# --- the sleeping workers (threads here) ------------------------------------------------------


def fake_worker(
    store: JobStore, name: str, stop: threading.Event, claims: list[float], done: list[str]
) -> None:
    """The store traffic of `Worker` for one job after another; sleeps instead of rendering."""
    while not stop.is_set():
        t0 = time.perf_counter()
        job = store.claim_next(name, LEASE_S)
        claims.append(time.perf_counter() - t0)
        if job is None:
            stop.wait(0.02)
            continue
        for step in range(1, STEPS + 1):
            time.sleep(STEP_S)
            store.record_progress(
                job.id, {"stage": "stylegan", "step": step, "total": STEPS}, None, attempt=job.attempts
            )
            if step == 3:
                store.renew_lease(job.id, job.attempts, LEASE_S)
        store.finish(job.id, JobState.SUCCEEDED, EventType.FINISHED, {}, attempt=job.attempts)
        done.append(job.id)


def finish_all(store: JobStore) -> None:
    while (job := store.claim_next("cleanup")) is not None:
        store.finish(job.id, JobState.SUCCEEDED, EventType.FINISHED, {})


def q(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p * (len(values) - 1)))] * 1000


def opener(url: str, folder: Path) -> Any:
    return lambda: open_store(url, folder / "data" / "engine.sqlite3")


async def bench_submits(nodes: list[ApiNode], n: int = 100) -> tuple[float, float]:
    async def one(i: int) -> float:
        t0 = time.perf_counter()
        await nodes[i % len(nodes)].client.submit(request(i))
        return time.perf_counter() - t0

    await asyncio.gather(*(one(10_000 + i) for i in range(10)))  # warm the connections
    times = await asyncio.gather(*(one(i) for i in range(n)))
    return q(list(times), 0.5), q(list(times), 0.99)


def bench_throughput(
    open_: Any, workers: int, jobs: int, submit_store: JobStore
) -> tuple[float, float, float]:
    from engine.service.spec import resolve
    from engine.service.store import NewJob
    from spooky.config import PipelineConfig
    from spooky.contract import GuildLimits

    def accept(counts: Any, limits: Any) -> None:
        return None

    for i in range(jobs):
        req = request(i % 7)
        submit_store.submit(
            NewJob(
                id=f"tp-{workers}-{i}",
                request=req,
                spec=resolve(req, PipelineConfig(), GuildLimits()),
                source_artifact=None,
                created_at=time.time(),
            ),
            accept,
            lambda snap: {},
        )
    stop = threading.Event()
    claims: list[float] = []
    done: list[str] = []
    stores = [open_() for _ in range(workers)]
    threads = [
        threading.Thread(target=fake_worker, args=(s, f"w{k}", stop, claims, done), daemon=True)
        for k, s in enumerate(stores)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while len(done) < jobs:
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert len(set(done)) == len(done) == jobs, "a job ran twice"
    return jobs / elapsed * 60, q(claims, 0.5), q(claims, 0.99)


async def bench_events(node: ApiNode, open_: Any, n: int = 30) -> tuple[float, float]:
    """A worker here writes progress; the API node streams it: commit -> SSE receipt."""
    store = open_()
    job = (await node.client.submit(request(77_777, guild="999"))).job
    claimed = await asyncio.to_thread(store.claim_next, "ev", LEASE_S)
    assert claimed is not None and claimed.id == job.id
    latencies: list[float] = []
    committed: dict[int, float] = {}
    got = asyncio.Event()

    async def read() -> None:
        async for ev in node.client.events(job_id=job.id):
            if ev.type is EventType.PROGRESS:
                latencies.append(time.time() - committed.get(ev.data["step"], time.time()))
                if len(latencies) >= n:
                    got.set()
                    return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.5)  # the stream is open and waiting
    for step in range(1, n + 1):
        committed[step] = time.time()
        await asyncio.to_thread(store.record_progress, job.id, {"stage": "s", "step": step, "total": n}, None)
        await asyncio.sleep(0.05)
    await asyncio.wait_for(got.wait(), 60)
    reader.cancel()
    store.close()
    return q(latencies, 0.5), q(latencies, 0.99)


async def run_backend(name: str, url: str, folder: Path, jobs: int) -> dict[str, Any]:
    cfg = config(folder)
    open_ = opener(url, folder)
    role = "api" if url else "all"
    out: dict[str, Any] = {}
    first = ApiNode(cfg, url, role)
    nodes = [first]
    try:
        await first.up()
        out["submit 1 node p50/p99 ms"] = await bench_submits([first])
        if url:
            second = ApiNode(cfg, url, role)
            nodes.append(second)
            await second.up()
            out["submit 2 nodes p50/p99 ms"] = await bench_submits(nodes)
        submit_store = open_()
        for counts in [1, 2, 4] if url else [1]:
            finish_all(submit_store)  # the submit runs' jobs are not part of the throughput runs
            jpm, c50, c99 = await asyncio.to_thread(bench_throughput, open_, counts, jobs, submit_store)
            out[f"jobs/min {counts} worker(s)"] = round(jpm, 1)
            out[f"claim p50/p99 ms ({counts} w)"] = (c50, c99)
        finish_all(submit_store)
        submit_store.close()
        if url:
            out["event delivery across nodes p50/p99 ms"] = await bench_events(nodes[-1], open_)
    finally:
        for node in nodes:
            await node.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24, help="jobs per throughput run")
    args = parser.parse_args()
    from pgserver import PgServer

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-farm-") as tmp:
        root = Path(tmp)
        (root / "sqlite").mkdir()
        results["sqlite"] = await run_backend("sqlite", "", root / "sqlite", args.jobs)
        server = PgServer()
        server.start()
        try:
            (root / "pg").mkdir()
            results["postgresql"] = await run_backend("postgresql", server.database(), root / "pg", args.jobs)
        finally:
            server.close()
    ideal = 60 / (STEPS * STEP_S)
    print(
        f"steps per job {STEPS} x {STEP_S:g} s sleep: ideal {ideal:.0f} jobs/min per worker; "
        f"{args.jobs} jobs per run"
    )
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    print(f"{'figure':42} {'SQLite':>18} {'PostgreSQL':>18}")
    for key in keys:

        def show(v: Any) -> str:
            if v is None:
                return "n/a"
            if isinstance(v, tuple):
                return f"{v[0]:.1f} / {v[1]:.1f}"
            return str(v)

        print(f"{key:42} {show(results['sqlite'].get(key)):>18} {show(results['postgresql'].get(key)):>18}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-api":
        serve_api(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        asyncio.run(main())
