"""A small render farm for the tests: real `spooky engine --role …` processes on a real PostgreSQL.

Each node is a child process on its own port with its output in a log file; the workers run the
tiny preset, each with its own step gate (engine/service/testgate.py), so a test waits on the
gate or on the store's state, never on a step being slow.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from service_helpers import SECRET
from support import free_port
from testgate import StepGate

from spooky.contract import Event, EventType
from spooky.engine_client import EngineClient, EngineUnavailable

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, *, lease_s: float = 3) -> Path:
    cfg = tmp_path / f"config-lease-{lease_s:g}.toml"
    cfg.write_text(
        f"""
[engine]
secret = "{SECRET}"
data_dir = "{tmp_path / "data"}"
artifacts_dir = "{tmp_path / "shared-artifacts"}"
lease_s = {lease_s}
drain_timeout_s = 2

[models]
preset = "tiny"

[pipeline]
cutouts = 1
still_every = 4
stylegan_steps = 2
scare_steps = 1
nightmare_frames = 6

[limits]
cooldown_s = 0
max_steps = 1000
max_jobs_per_user = 10
""",
        encoding="utf-8",
    )
    return cfg


class Node:
    """`spooky engine --role ROLE` as a child process on its own port, its output in a log file."""

    def __init__(
        self,
        tmp_path: Path,
        role: str,
        db_url: str,
        name: str,
        env: dict[str, str] | None = None,
        *,
        lease_s: float = 3,
        gate: StepGate | None = None,
    ):
        self.role = role
        self.port = free_port()
        self.log = tmp_path / f"{name}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_")}
        extra = {"SPOOKY_DATABASE_URL": db_url, "SPOOKY_ENGINE__PORT": str(self.port), **(env or {})}
        hook: list[str] = []
        if gate is not None:
            extra |= gate.env()
            hook = gate.args()
        cfg = write_config(tmp_path, lease_s=lease_s)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spooky.cli", "engine", "--config", str(cfg), "--role", role, *hook],
                cwd=ROOT,
                env={**base, **extra},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.client = EngineClient(f"http://127.0.0.1:{self.port}", SECRET)

    def output(self) -> str:
        """Everything the node logged so far."""
        return self.log.read_text(errors="replace")

    async def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.role} exited:\n{self.output()[-4000:]}"
            try:
                if (await self.client.health()).status == "ready":
                    return
            except EngineUnavailable:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"{self.role} not ready after {timeout} s:\n{self.output()[-4000:]}")

    async def metric(self, name: str) -> float:
        """One unlabelled sample of the node's /metrics (0 when absent)."""
        url = f"{self.client.base_url}/metrics"
        async with self.client._http().get(url, headers={"Authorization": f"Bearer {SECRET}"}) as resp:
            assert resp.status == 200, (resp.status, await resp.text())
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        await asyncio.to_thread(self.proc.wait, 30)
        await self.client.close()


async def until(what: str, check: Any, timeout: float = 120) -> Any:
    """Poll the async `check` until it returns neither None nor False; what it returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await check()
        if got is not None and got is not False:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def started(events: list[Event], job_id: str) -> int:
    return sum(1 for e in events if e.job_id == job_id and e.type is EventType.STARTED)


async def held_at(gates: list[StepGate], job_id: str) -> int | None:
    """The index of the gate where `job_id` waits, if any."""
    for i, gate in enumerate(gates):
        state = gate.state
        if state.waiting and state.job_id == job_id:
            return i
    return None


async def terminal(client: EngineClient, job_id: str) -> bool:
    """Whether the job has ended; False while the node answers 503 (its database is down)."""
    try:
        return (await client.job(job_id)).state.terminal
    except EngineUnavailable:
        return False


async def streamed(events: list[Event], ids: list[str], type_: EventType = EventType.FINISHED) -> bool:
    return {e.job_id for e in events if e.type is type_} >= set(ids)


async def idle(node: Node) -> bool:
    return (await node.client.health()).running_job is None
