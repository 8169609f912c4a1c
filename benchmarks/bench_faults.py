"""Two faults against a real `spooky engine` process, timed: an ffmpeg that never reads and never
exits, and a SIGTERM to the engine's whole process group (Ctrl-C, systemd's default) mid-encode.

    python benchmarks/bench_faults.py                  # this checkout
    python benchmarks/bench_faults.py --root ../main   # the same cases against another checkout

hung:  job_timeout_s = 5; a /spooky, then a /nightmare whose ffmpeg hangs, then another /spooky.
       Prints how long the nightmare took to end and how, whether the next job ran, and how long
       a SIGTERM then took to stop the engine and in what state it left the nightmare.
group: the same hanging ffmpeg, drain_timeout_s = 3; SIGTERM to the process group while the
       nightmare encodes. Prints the nightmare's state afterwards (queued = drained and requeued).
Every wait is capped (--cap), so a wedged engine shows as "still running after N s".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from spooky.contract import JobKind, JobRequest, Requester  # noqa: E402
from spooky.engine_client import EngineClient, EngineUnavailable  # noqa: E402

SECRET = "bench-faults-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def req(kind: JobKind, user: str = "1") -> JobRequest:
    return JobRequest(
        kind=kind, prompt="a ghost", requester=Requester(user_id=user, channel_id="200", guild_id="100")
    )


class Case:
    def __init__(self, root: Path, folder: Path, **engine: float) -> None:
        self.folder = folder
        self.port = free_port()
        self.marker = folder / "ffmpeg.pid"
        script = folder / "ffmpeg"
        script.write_text(f'#!/bin/sh\necho $$ >> "{self.marker}"\nexec sleep 600\n')
        script.chmod(0o755)
        extra = "\n".join(f"{k} = {v}" for k, v in engine.items())
        cfg = folder / "config.toml"
        cfg.write_text(
            f'[engine]\nsecret = "{SECRET}"\nport = {self.port}\ndata_dir = "{folder / "data"}"\n{extra}\n'
            '[models]\npreset = "tiny"\n[pipeline]\ncutouts = 1\nstylegan_steps = 2\nscare_steps = 1\n'
            "nightmare_frames = 3\n[limits]\ncooldown_s = 0\n",
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_")}
        env |= {"SPOOKY_FFMPEG": str(script), "PYTHONPATH": str(root)}
        with open(folder / "engine.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spooky.cli", "engine", "--config", str(cfg)],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a group of its own, as a shell or systemd gives it
            )
        self.client = EngineClient(f"http://127.0.0.1:{self.port}", SECRET, timeout=30)

    async def ready(self) -> None:
        for _ in range(600):
            try:
                if (await self.client.health()).status == "ready":
                    return
            except EngineUnavailable:
                pass
            await asyncio.sleep(0.2)
        raise SystemExit("engine not ready")

    async def until_done(self, job_id: str, cap: float) -> tuple[str, float]:
        t0 = time.monotonic()
        while True:
            view = await self.client.job(job_id)
            if view.state.terminal:
                return f"{view.state.value}:{view.error_code}", time.monotonic() - t0
            if time.monotonic() - t0 > cap:
                return f"still {view.state.value}", cap
            await asyncio.sleep(0.2)

    def exit_within(self, cap: float) -> str:
        t0 = time.monotonic()
        try:
            code = self.proc.wait(cap)
        except subprocess.TimeoutExpired:
            return f"still running after {cap:g} s"
        return f"exit {code} after {time.monotonic() - t0:.1f} s"

    def state(self, job_id: str) -> str:
        db = sqlite3.connect(f"file:{self.folder / 'data' / 'engine.sqlite3'}?mode=ro", uri=True)
        try:
            return "/".join(
                map(str, db.execute("SELECT state, attempts FROM jobs WHERE id = ?", (job_id,)).fetchone())
            )
        finally:
            db.close()

    async def close(self) -> None:
        await self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.marker.exists():  # the fake encoders this run started
            for pid in self.marker.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


async def hung(root: Path, folder: Path, cap: float) -> dict[str, str]:
    case = Case(root, folder, job_timeout_s=5, drain_timeout_s=3)
    try:
        await case.ready()
        first = (await case.client.submit(req(JobKind.SPOOKY))).job.id
        await case.until_done(first, cap)
        night = (await case.client.submit(req(JobKind.NIGHTMARE))).job.id
        after = (await case.client.submit(req(JobKind.SPOOKY, "2"))).job.id
        outcome, seconds = await case.until_done(night, cap)
        nxt, _ = await case.until_done(after, 10)
        os.kill(case.proc.pid, signal.SIGTERM)
        stopped = case.exit_within(cap)
        return {
            "nightmare (job_timeout_s 5)": f"{outcome} after {seconds:.1f} s",
            "next job": nxt,
            "SIGTERM to the engine": stopped,
            "nightmare in the store after": case.state(night),
        }
    finally:
        await case.close()


async def group(root: Path, folder: Path, cap: float) -> dict[str, str]:
    case = Case(root, folder, drain_timeout_s=3)
    try:
        await case.ready()
        first = (await case.client.submit(req(JobKind.SPOOKY))).job.id
        await case.until_done(first, cap)
        night = (await case.client.submit(req(JobKind.NIGHTMARE))).job.id
        while not case.marker.exists():
            await asyncio.sleep(0.1)
        os.killpg(case.proc.pid, signal.SIGTERM)
        stopped = case.exit_within(cap)
        return {"SIGTERM to the process group": stopped, "nightmare in the store after": case.state(night)}
    finally:
        await case.close()


async def main(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        a, b = Path(tmp) / "hung", Path(tmp) / "group"
        a.mkdir()
        b.mkdir()
        return {"hung": await hung(args.root, a, args.cap), "group": await group(args.root, b, args.cap)}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=HERE, help="checkout whose engine runs")
    p.add_argument("--cap", type=float, default=45.0, help="longest wait for each outcome")
    print(json.dumps(asyncio.run(main(p.parse_args())), indent=2))
