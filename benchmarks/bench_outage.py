"""What a PostgreSQL outage mid-queue costs a render farm, on real processes.

    python benchmarks/bench_outage.py                       # 10 s outage, 24 jobs, 2 workers
    python benchmarks/bench_outage.py --outage 45 --lease 30  # an outage longer than the lease

What runs: a PostgreSQL server started like the test suite's (tests/pgserver.py), one API node
(`spooky engine --role api`) and `--workers` render workers (`--role worker`, tiny preset, real
renders) with `[engine] lease_s = --lease`. A queue of `--jobs` spooky jobs is submitted; `--at`
seconds after the first job started, the server is stopped with `pg_ctl -m immediate` (every
connection cut, as a crash or a failover does) and started again `--outage` seconds later. One
event stream, opened on the API node before the first submit, follows everything.

Figures: jobs re-run (attempts beyond the first; target 0 while the outage is shorter than the
lease), jobs failed, the longest silence the stream client saw (it includes the outage itself),
the time from the restart to the stream's first event and to the last job's result, and whether
the stream delivered every event once (compared with a fresh read from the start).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
for folder in (HERE, HERE / "tests", HERE / "tests" / "service"):
    sys.path.insert(0, str(folder))

from farm_helpers import Node  # noqa: E402
from pgserver import PgServer  # noqa: E402

from spooky.contract import Event, EventType, JobKind, JobRequest, Requester  # noqa: E402
from spooky.engine_client import EngineUnavailable  # noqa: E402


def request(n: int, steps: int) -> JobRequest:
    return JobRequest(
        kind=JobKind.SPOOKY,
        prompt="dracula pale fangs",
        requester=Requester(user_id=str(1000 + n % 8), guild_id=str(100 + n % 3), channel_id="200"),
        steps=steps,
        scare_steps=2,
        idempotency_key=f"outage-{n}",
    )


async def run(args: argparse.Namespace, server: PgServer, folder: Path) -> dict[str, Any]:
    url = server.database()
    api = Node(folder, "api", url, "api", lease_s=args.lease)
    workers = [Node(folder, "worker", url, f"worker{i}", lease_s=args.lease) for i in range(args.workers)]
    nodes = [api, *workers]
    arrivals: list[tuple[float, Event]] = []
    try:
        await asyncio.gather(*(n.wait_ready() for n in nodes))

        async def follow() -> None:
            async for event in api.client.events():
                arrivals.append((time.monotonic(), event))

        follower = asyncio.create_task(follow())
        ids = [(await api.client.submit(request(n, args.steps))).job.id for n in range(args.jobs)]
        while not any(e.type is EventType.STARTED for _, e in arrivals):
            await asyncio.sleep(0.05)
        await asyncio.sleep(args.at)
        stopped = time.monotonic()
        server.stop("immediate")
        await asyncio.sleep(args.outage)
        server.start(server.port)
        restarted = time.monotonic()

        def finished() -> set[str]:
            return {e.job_id for _, e in arrivals if e.type in (EventType.FINISHED, EventType.FAILED)}

        deadline = time.monotonic() + args.timeout
        while not finished() >= set(ids):
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(finished())} of {len(ids)} jobs ended within --timeout")
            await asyncio.sleep(0.1)
        last_result = max(t for t, e in arrivals if e.type in (EventType.FINISHED, EventType.FAILED))
        follower.cancel()
        views = []
        for job_id in ids:
            while True:
                try:
                    views.append(await api.client.job(job_id))
                    break
                except EngineUnavailable:
                    await asyncio.sleep(0.2)
        replay: list[Event] = []
        async for event in api.client.events():
            replay.append(event)
            if event.id >= arrivals[-1][1].id:
                break
        times = [t for t, _ in arrivals]
        streamed = [e for _, e in arrivals]
        results = [t for t, e in arrivals if e.type in (EventType.FINISHED, EventType.FAILED)]
        return {
            "jobs": len(ids),
            "re-run": sum(v.attempts - 1 for v in views),
            "failed": sum(v.error is not None for v in views),
            "longest_gap_s": max(b - a for a, b in itertools.pairwise(times)),
            "restart_to_first_event_s": min(t for t in times if t > restarted) - restarted,
            "restart_to_last_result_s": last_result - restarted,
            "outage_s": restarted - stopped,
            "results_before": sum(t < stopped for t in results),
            "results_during": sum(stopped <= t < restarted for t in results),
            "results_after": sum(t >= restarted for t in results),
            "stream_complete": streamed == replay,
            "events": len(streamed),
        }
    finally:
        for node in nodes:
            await node.close()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = PgServer()
    server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-outage-") as tmp:
            return await run(args, server, Path(tmp))
    finally:
        server.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=24, help="spooky jobs in the queue")
    p.add_argument("--steps", type=int, default=60, help="stage-1 steps per job (tiny preset)")
    p.add_argument("--workers", type=int, default=2, help="render workers")
    p.add_argument("--lease", type=float, default=30, help="[engine] lease_s of every node")
    p.add_argument("--at", type=float, default=5, help="seconds after the first start to stop the database")
    p.add_argument("--outage", type=float, default=10, help="seconds the database stays down")
    p.add_argument("--timeout", type=float, default=600, help="give up after this long after the restart")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    f = asyncio.run(main(args))
    print(
        f"outage {f['outage_s']:.1f} s (lease {args.lease:g} s), {f['jobs']} jobs on {args.workers} workers: "
        f"{f['re-run']} re-run, {f['failed']} failed"
    )
    print(
        f"stream: {f['events']} events, complete and in order: {f['stream_complete']}; longest silence "
        f"{f['longest_gap_s']:.1f} s; first event {f['restart_to_first_event_s']:.1f} s after the restart"
    )
    print(
        f"results: {f['results_before']} before the outage, {f['results_during']} during it, "
        f"{f['results_after']} after; the last {f['restart_to_last_result_s']:.1f} s after the restart"
    )
