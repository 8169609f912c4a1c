"""kill -9 a real engine N times at chosen points; count lost jobs, jobs finished twice and engines
that fail to start again.

    python benchmarks/kill_points.py --kills 20

One data folder lives through every kill. Each round starts the engine through
benchmarks/kill_launcher.py with the next kill point, keeps jobs coming (idempotent submits, the
same key again after an unanswered one) until the engine dies, and goes on with the next. Then a
plain engine runs the queue dry. It prints, from the engine's SQLite file: jobs accepted and
found, jobs that finished twice, gaps or repeats in the event ids, starts that failed, files
without a row, and each job's end state.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spooky.contract import JobKind, JobRequest, Requester  # noqa: E402
from spooky.engine_client import (  # noqa: E402
    EngineClient,
    EngineRefused,
    EngineRequestError,
    EngineUnavailable,
)

SECRET = "kill-points-secret"
VIDEO_POINTS = ("nightmare", "video_close", "fit")
POINTS = ("load", "submit", "stylegan", "scare", "fsync", "move", "nightmare", "video_close", "fit")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(folder: Path, port: int) -> Path:
    cfg = folder / "config.toml"
    cfg.write_text(
        f"""
[engine]
secret = "{SECRET}"
port = {port}
data_dir = "{folder / "data"}"
drain_timeout_s = 5

[models]
preset = "tiny"

[pipeline]
cutouts = 1
still_every = 2
stylegan_steps = 4
scare_steps = 3
nightmare_frames = 6

[limits]
cooldown_s = 0
max_jobs_per_user = 50
max_queue_per_server = 50
""",
        encoding="utf-8",
    )
    return cfg


def start(cfg: Path, log: Path, point: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_")}
    if point:
        env["SPOOKY_KILL_AT"] = point
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "kill_launcher.py"), "engine", "--config", str(cfg)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def up(client: EngineClient, proc: subprocess.Popen[bytes], timeout: float = 90) -> bool:
    """True once the API answers; False when the process exited first (or never answered)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            await client.health()
            return True
        except EngineUnavailable:
            await asyncio.sleep(0.1)
    return False


class Jobs:
    """Submits with idempotency keys; an unanswered submit is sent again with the same key."""

    def __init__(self) -> None:
        self.accepted: dict[str, str] = {}  # key -> job id
        self.unanswered: list[JobRequest] = []
        self.refused = 0
        self.n = 0

    def next(self, kind: JobKind | None = None, user: str | None = None) -> JobRequest:
        """The next request: one left unanswered first, else a new one (alternating kinds)."""
        if self.unanswered:
            return self.unanswered.pop(0)
        self.n += 1
        user = user or str(1 + self.n % 3)
        kind = kind or (JobKind.NIGHTMARE if self.n % 2 == 0 else JobKind.SPOOKY)
        return JobRequest(
            kind=kind,
            prompt="dracula pale fangs",
            requester=Requester(user_id=user, channel_id="200", guild_id="100"),
            idempotency_key=f"kill-{self.n}",
        )

    async def submit(self, client: EngineClient, req: JobRequest) -> None:
        try:
            answer = await client.submit(req)
        except EngineUnavailable:
            self.unanswered.append(req)  # the engine died: was it stored? ask again with the same key
            return
        except (EngineRefused, EngineRequestError):
            self.refused += 1  # e.g. a nightmare before that user has an image
            return
        key = req.idempotency_key or ""
        if key in self.accepted and self.accepted[key] != answer.job.id:
            raise SystemExit(f"the key {key} made two jobs: {self.accepted[key]} and {answer.job.id}")
        self.accepted[key] = answer.job.id


async def round_(cfg: Path, log: Path, point: str, jobs: Jobs, port: int) -> dict[str, object]:
    proc = start(cfg, log, point)
    async with EngineClient(f"http://127.0.0.1:{port}", SECRET, timeout=10) as client:
        started = await up(client, proc)
        if not started and proc.returncode not in (None, -9):
            return {"point": point, "started": False, "exit": proc.returncode}
        deadline = time.monotonic() + 90
        sent = 0
        video = point in VIDEO_POINTS  # only a nightmare reaches these: an image first, then nightmares
        while proc.poll() is None and time.monotonic() < deadline:
            if sent < 4 or jobs.unanswered:  # enough work to reach the point, not a flood
                refused = jobs.refused
                if video:
                    kind = JobKind.SPOOKY if sent == 0 else JobKind.NIGHTMARE
                    await jobs.submit(client, jobs.next(kind, user="1"))
                else:
                    await jobs.submit(client, jobs.next())
                # A nightmare refused while its image is still rendering does not count: ask again.
                sent += 0 if video and jobs.refused > refused else 1
            await asyncio.sleep(0.3)
    reached = proc.poll() == -9
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)
    return {"point": point, "started": True, "killed": reached}


async def main(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="kill-points-") as tmp:
        folder = Path(tmp)
        port = free_port()
        cfg = config(folder, port)
        log = folder / "engine.log"
        jobs = Jobs()
        rounds = []
        for i in range(args.kills):
            rounds.append(await round_(cfg, log, args.points[i % len(args.points)], jobs, port))
            print(json.dumps(rounds[-1]), flush=True)
        # A plain engine: answer what was left unanswered, then run the queue dry.
        proc = start(cfg, log, "")
        try:
            async with EngineClient(f"http://127.0.0.1:{port}", SECRET, timeout=30) as client:
                final_start = await up(client, proc)
                for unanswered in jobs.unanswered[:] if final_start else []:
                    jobs.unanswered.remove(unanswered)
                    await jobs.submit(client, unanswered)
                deadline = time.monotonic() + (args.timeout if final_start else 0)
                while time.monotonic() < deadline:
                    views = [await client.job(j) for j in jobs.accepted.values()]
                    if all(v.state.terminal for v in views):
                        break
                    await asyncio.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(60)
        db = sqlite3.connect(f"file:{folder / 'data' / 'engine.sqlite3'}?mode=ro", uri=True)
        try:
            stored = {r[0]: r[1:] for r in db.execute("SELECT id, state, error_code, attempts FROM jobs")}
            ends = collections.Counter(
                r[0] for r in db.execute(
                    "SELECT job_id FROM events WHERE type IN ('finished', 'failed', 'cancelled')"
                )
            )  # fmt: skip
            ids = [r[0] for r in db.execute("SELECT id FROM events ORDER BY id")]
            artifact_ids = {r[0] for r in db.execute("SELECT id FROM artifacts")}
        finally:
            db.close()
        files = [p for p in (folder / "data" / "artifacts").glob("??/*") if p.is_file()]
    lost = [j for j in jobs.accepted.values() if j not in stored]
    return {
        "kills": sum(1 for r in rounds if r.get("killed")),
        "rounds": len(rounds),
        "points_not_reached": [r["point"] for r in rounds if r.get("started") and not r.get("killed")],
        "failed_starts": sum(1 for r in rounds if not r.get("started")) + (0 if final_start else 1),
        "accepted": len(jobs.accepted),
        "lost": len(lost),
        "finished_twice": sum(1 for n in ends.values() if n > 1),
        "event_ids_repeated": len(ids) - len(set(ids)),
        "event_id_gaps": sum(1 for a, b in itertools.pairwise(ids) if b != a + 1),
        "jobs_by_end": dict(collections.Counter(f"{s}:{c or '-'}" for s, c, _ in stored.values())),
        "files_without_row": sum(1 for p in files if p.stem not in artifact_ids),
        "refused_submits": jobs.refused,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--points", nargs="+", choices=POINTS, default=list(POINTS), help="kill points, in turn")
    p.add_argument("--timeout", type=float, default=300, help="for the last engine to run the queue dry")
    figures = asyncio.run(main(p.parse_args()))
    print(json.dumps(figures, indent=2))
