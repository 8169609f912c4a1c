"""Engine service figures against a real `spooky engine` process on the tiny preset.

  submit     submit -> 202 latency (p50/p99) of --concurrency simultaneous submits from as many
             users, measured by the client (HTTP + validation + limits + SQLite commit with fsync)
  events     event delivery latency: Event.at (set by the engine when it commits the event) to
             the moment the client's SSE reader has parsed it (same machine, same clock)
  throughput jobs per minute: --jobs spooky jobs (--steps/--scare-steps, --cutouts) run back to
             back, from the first STARTED to the last FINISHED event

    python benchmarks/bench_service.py
    python benchmarks/bench_service.py --concurrency 100 --rounds 3 --jobs 6 --json bench_service.json
    python benchmarks/bench_service.py --history 100000   # the same with 100,000 finished jobs stored

  --history N seeds the store with N finished jobs (with their events, four artifact rows each and
  a last image per user) before the engine starts, and also times `recent_durations` (read after
  every finished job) and the bot's undelivered-jobs query on that file. With --history-age-h over
  24 the engine's first retention sweep prunes them all: `sweep` times it and the submits sent
  while it runs, in an engine without models in this process (the artifact rows have no files:
  this is the store's share of a backlog).

Not a test: it prints figures. Run it on an idle machine for numbers worth comparing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spooky.contract import EventType, JobKind, JobRequest, Requester  # noqa: E402
from spooky.engine_client import EngineClient, EngineUnavailable  # noqa: E402

SECRET = "bench-secret"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, port: int, args: argparse.Namespace) -> Path:
    cfg = folder / "config.toml"
    cfg.write_text(
        f"""
[engine]
secret = "{SECRET}"
port = {port}
data_dir = "{folder / "data"}"
max_queue = {max(1000, args.concurrency * args.rounds + args.jobs + 10)}
drain_timeout_s = 0

[models]
preset = "tiny"
device = "{args.device}"

[pipeline]
cutouts = {args.cutouts}
still_every = {args.still_every}

[limits]
cooldown_s = 0
max_jobs_per_user = 100
max_queue_per_server = 1000
""",
        encoding="utf-8",
    )
    return cfg


def job(user: str, args: argparse.Namespace, key: str | None = None) -> JobRequest:
    return JobRequest(
        kind=JobKind.SPOOKY,
        prompt="dracula pale fangs",
        steps=args.steps,
        scare_steps=args.scare_steps,
        requester=Requester(user_id=user, channel_id="200", guild_id=str(100 + int(user) % 4)),
        idempotency_key=key,
    )


async def wait_ready(client: EngineClient, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the engine exited with {proc.returncode}")
        try:
            if (await client.health()).status == "ready":
                return
        except EngineUnavailable:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the engine did not become ready")


async def first_answer(client: EngineClient, proc: subprocess.Popen, started: float) -> float:
    """Seconds from the engine's start to its first health answer (a start-up sweep must not block it)."""
    while proc.poll() is None:
        try:
            await client.health()
            return time.monotonic() - started
        except EngineUnavailable:
            await asyncio.sleep(0.05)
    raise SystemExit(f"the engine exited with {proc.returncode}")


async def bench_submit(client: EngineClient, args: argparse.Namespace) -> dict[str, Any]:
    """Rounds of `concurrency` simultaneous submits; the accepted jobs are cancelled after each round."""
    latencies: list[float] = []
    per_round: list[float] = []
    for rnd in range(args.rounds):

        async def one(i: int, rnd: int = rnd) -> tuple[float, str]:
            req = job(str(1000 + i), args, key=f"bench-{rnd}-{i}")
            t0 = time.perf_counter()
            answer = await client.submit(req)
            return time.perf_counter() - t0, answer.job.id

        results = await asyncio.gather(*(one(i) for i in range(args.concurrency)))
        latencies += [t for t, _ in results]
        per_round.append(percentile([t for t, _ in results], 0.5) * 1000)
        # Clear the queue so the throughput run starts empty (moderator cancel, as a bot would).
        for _, job_id in results:
            await client.cancel(job_id, actor_id="1", is_moderator=True)
    return {
        "submits": len(latencies),
        "concurrency": args.concurrency,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "p50_ms_by_round": per_round,
    }


async def bench_jobs(client: EngineClient, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run `jobs` jobs back to back while an SSE reader measures delivery latency of every event."""
    delays: list[float] = []
    finished: dict[str, float] = {}
    started: dict[str, float] = {}
    ids: set[str] = set()
    since = time.time()
    live = asyncio.Event()

    async def read() -> None:
        async for event in client.events():
            if event.at < since:
                continue  # history from the submit rounds, replayed from the store: not live delivery
            live.set()
            delays.append(time.time() - event.at)
            if event.job_id in ids:
                # The engine's own timestamps: the span does not depend on when the reader saw them.
                if event.type is EventType.STARTED:
                    started[event.job_id] = event.at
                if event.type in (EventType.FINISHED, EventType.FAILED):
                    finished[event.job_id] = event.at
                    if len(finished) == len(ids) == args.jobs:
                        return

    reader = asyncio.create_task(read())
    # A marker job: once its QUEUED event arrives, the reader has replayed the history.
    marker = (await client.submit(job("999999", args, key=f"marker-{since}"))).job.id
    await client.cancel(marker, actor_id="1", is_moderator=True)
    await asyncio.wait_for(live.wait(), args.timeout)
    delays.clear()
    for i in range(args.jobs):
        ids.add((await client.submit(job(str(i), args))).job.id)
    await asyncio.wait_for(reader, args.timeout)
    span = max(finished.values()) - min(started.values())
    failed = [j for j in ids if (await client.job(j)).error]
    events = {
        "events": len(delays),
        "p50_ms": percentile(delays, 0.5) * 1000,
        "p99_ms": percentile(delays, 0.99) * 1000,
        "max_ms": max(delays) * 1000,
    }
    throughput = {
        "jobs": args.jobs,
        "failed": len(failed),
        "seconds": span,
        "jobs_per_minute": 60 * args.jobs / span,
        "job": f"spooky, {args.steps}+{args.scare_steps} steps, {args.cutouts} cutouts, tiny preset",
    }
    return events, throughput


def seed_history(db: Path, n: int, age_h: float) -> dict[str, Any]:
    """Store `n` finished spooky jobs and three events each, the newest `age_h` hours old (past
    engine.artifact_retention_hours, 24, the first sweep prunes them: the backlog case)."""
    from engine.service.store import SQLiteStore

    store = SQLiteStore(db)
    store.close()
    con = sqlite3.connect(db)
    now = time.time() - age_h * 3600
    req = job("1", argparse.Namespace(steps=10, scare_steps=5))
    spec = json.dumps({"prompt": req.prompt, "seed": 1, "steps": 10, "scare_steps": 5, "size": None})
    t0 = time.perf_counter()
    with con:
        con.executemany(
            "INSERT INTO jobs (id, kind, state, guild_id, channel_id, user_id, request, spec, created_at,"
            " started_at, finished_at, attempts, claim_round) VALUES (?,?,?,?,?,?,?,?,?,?,?,1,?)",
            (
                (
                    f"hist-{i}", "spooky", "succeeded", str(100 + i % 50), "200", str(i % 5000),
                    req.model_dump_json(), spec, now - n + i, now - n + i, now - n + i + 30.0, i,
                )
                for i in range(n)
            ),
        )  # fmt: skip
        con.executemany(
            "INSERT INTO events (job_id, type, at, guild_id, channel_id, user_id, data)"
            " VALUES (?,?,?,?,?,?,?)",
            (
                (f"hist-{i}", t, now - n + i, str(100 + i % 50), "200", str(i % 5000), "{}")
                for i in range(n)
                for t in ("queued", "started", "finished")
            ),
        )
        con.executemany(
            "INSERT INTO artifacts (id, media_type, bytes, path, job_id, width, height, created_at)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (
                (f"hist-{i}-{k}", "image/png", 1000, f"hi/hist-{i}-{k}.png", f"hist-{i}", 64, 64, now - n + i)
                for i in range(n)
                for k in range(4)
            ),
        )
        con.executemany(
            "INSERT INTO last_images (user_id, channel_id, artifact_id, job_id, at) VALUES (?,?,?,?,?)"
            " ON CONFLICT (user_id, channel_id) DO UPDATE SET artifact_id = excluded.artifact_id,"
            " job_id = excluded.job_id",
            (
                (str(i % 5000), "200", f"hist-{i}-1", f"hist-{i}", now - n + i)
                for i in range(max(0, n - 5000), n)
            ),
        )
        con.execute("UPDATE jobs SET delivered = 1")
    con.close()
    store = SQLiteStore(db)
    try:

        def median_ms(call: Any) -> float:
            times = []
            for _ in range(20):
                t1 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t1)
            return statistics.median(times) * 1000

        durations = median_ms(lambda: store.recent_durations(JobKind.SPOOKY))
        undelivered = median_ms(lambda: store.list_jobs(undelivered=True, limit=100))
    finally:
        store.close()
    return {
        "jobs": n,
        "seed_seconds": time.perf_counter() - t0,
        "recent_durations_ms": durations,
        "undelivered_ms": undelivered,
        "db_bytes": db.stat().st_size,
    }


async def bench_sweep(db: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The first retention sweep over the seeded backlog, in an engine without models (in this
    process, so no model load competes for the CPUs), with submits 10 at a time while it runs."""
    from engine.service.app import EngineService
    from spooky.config import Settings

    data = db.parent.parent / "sweep-data"
    data.mkdir()
    shutil.copy(db, data / db.name)
    settings = Settings.model_validate(
        {
            "engine": {"secret": SECRET, "data_dir": str(data), "artifact_retention_hours": 24},
            "models": {"preset": "tiny"},
            "limits": {"cooldown_s": 0, "max_jobs_per_user": 100, "max_queue_per_server": 1000},
        }
    )
    service = EngineService(settings, port=0, autoload=False)
    done = asyncio.Event()
    sweep = service.core.sweep
    took: list[float] = []

    async def timed_sweep() -> int:
        t0 = time.perf_counter()
        try:
            return await sweep()
        finally:
            took.append(time.perf_counter() - t0)
            done.set()

    service.core.sweep = timed_sweep  # type: ignore[method-assign]
    during: list[float] = []
    after: list[float] = []
    async with service, EngineClient(service.url, SECRET, timeout=60) as client:
        n = 0

        async def one(i: int) -> float:
            t0 = time.perf_counter()
            answer = await client.submit(job(str(5000 + i % 20), args, key=f"sweep-{i}"))
            elapsed = time.perf_counter() - t0
            await client.cancel(answer.job.id, actor_id="1", is_moderator=True)
            return elapsed

        while not done.is_set():
            during += await asyncio.gather(*(one(n + i) for i in range(10)))
            n += 10
        while len(after) < min(len(during), 2000):  # the same load once the sweep is over
            after += await asyncio.gather(*(one(n + i) for i in range(10)))
            n += 10

    def figures(latencies: list[float]) -> dict[str, float]:
        return {
            "submits": len(latencies),
            "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "max_ms": max(latencies, default=float("nan")) * 1000,
        }

    return {"sweep_s": took[0], "during": figures(during), "after": figures(after)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        folder = Path(tmp)
        port = free_port()
        cfg = write_config(folder, port, args)
        db = folder / "data" / "engine.sqlite3"
        history = seed_history(db, args.history, args.history_age_h) if args.history else None
        sweep = await bench_sweep(db, args) if args.history and args.history_age_h > 24 else None
        started = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_")}
        if args.threads:
            # On shared cores, OpenMP threads that outnumber the free cores spin against each other.
            env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        with open(folder / "engine.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "spooky.cli", "engine", "--config", str(cfg)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            async with EngineClient(f"http://127.0.0.1:{port}", SECRET, timeout=60) as client:
                first_health = await first_answer(client, proc, started)
                await wait_ready(client, proc)
                submit = await bench_submit(client, args)
                events, throughput = await bench_jobs(client, args)
        finally:
            proc.terminate()
            proc.wait(60)
    return {
        "history": history,
        "first_health_s": first_health,
        "sweep": sweep,
        "submit": submit,
        "events": events,
        "throughput": throughput,
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "load_average": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, default=100, help="simultaneous submits per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds of simultaneous submits")
    p.add_argument("--jobs", type=int, default=6, help="jobs run for the throughput figure")
    p.add_argument("--steps", type=int, default=10, help="stage-1 steps per job")
    p.add_argument("--scare-steps", type=int, default=5, help="stage-2 steps per job")
    p.add_argument("--cutouts", type=int, default=8, help="CLIP cutouts per step")
    p.add_argument("--still-every", type=int, default=5, help="a PNG still every N steps")
    p.add_argument("--device", default="auto", help="models.device of the engine")
    p.add_argument("--threads", type=int, help="torch CPU threads of the engine (OMP_NUM_THREADS)")
    p.add_argument("--timeout", type=float, default=900, help="give up on the throughput run after this")
    p.add_argument("--history", type=int, default=0, help="finished jobs stored before the engine starts")
    p.add_argument(
        "--history-age-h",
        type=float,
        default=1.0,
        help="age of the newest stored job (over 24: swept at start)",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    figures = asyncio.run(main(args))
    s, e, t = figures["submit"], figures["events"], figures["throughput"]
    if h := figures["history"]:
        print(
            f"history         {h['jobs']} finished jobs stored ({h['db_bytes'] / 2**20:.0f} MiB): "
            f"recent_durations {h['recent_durations_ms']:.2f} ms, undelivered jobs "
            f"{h['undelivered_ms']:.2f} ms (medians of 20)"
        )
    if w := figures["sweep"]:
        for when, f in (("meanwhile", w["during"]), ("after it", w["after"])):
            print(
                f"first sweep     {w['sweep_s']:.1f} s; {f['submits']} submits {when}, 10 at a time: "
                f"p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms, max {f['max_ms']:.1f} ms"
            )
    print(f"first health    {figures['first_health_s']:.2f} s after the engine started")
    print(
        f"submit -> 202   ({s['submits']} submits, {s['concurrency']} at a time): "
        f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms "
        f"(p50 by round: {', '.join(f'{x:.0f}' for x in s['p50_ms_by_round'])} ms)"
    )
    print(
        f"event delivery  ({e['events']} events): p50 {e['p50_ms']:.2f} ms, p99 {e['p99_ms']:.2f} ms, "
        f"max {e['max_ms']:.2f} ms"
    )
    print(
        f"throughput      ({t['job']}): {t['jobs_per_minute']:.1f} jobs/min "
        f"({t['jobs']} jobs in {t['seconds']:.1f} s, {t['failed']} failed)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
