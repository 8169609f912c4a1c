"""The real `spooky engine` process: kill -9 mid-job and restart loses nothing; SIGTERM drains."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from service_helpers import SECRET, request
from support import free_port
from testgate import StepGate

from spooky.contract import Event, EventType, JobState, RefusalCode
from spooky.engine_client import EngineClient, EngineRefused, EngineUnavailable

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DRAIN_TIMEOUT_S = 3


def write_config(tmp_path: Path, port: int) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[engine]
secret = "{SECRET}"
port = {port}
data_dir = "{tmp_path / "data"}"
drain_timeout_s = {DRAIN_TIMEOUT_S}

[models]
preset = "tiny"

[pipeline]
cutouts = 1
still_every = 4
stylegan_steps = 2
scare_steps = 1

[limits]
cooldown_s = 0
max_steps = 1000
""",
        encoding="utf-8",
    )
    return cfg


class Engine:
    """`python -m spooky.cli engine --config …` as a child process, its output in a log file."""

    def __init__(
        self,
        cfg: Path,
        log: Path,
        env: dict[str, str] | None = None,
        group: bool = False,
        gate: StepGate | None = None,
    ) -> None:
        """`env`: extra environment (e.g. SPOOKY_FFMPEG); `group`: lead its own process group, as a
        shell or systemd starts it, so a test can signal the whole group; `gate`: the step gate."""
        self.cfg = cfg
        self.log = log
        base = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_")}
        hook = gate.args() if gate is not None else []
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spooky.cli", "engine", "--config", str(cfg), *hook],
                cwd=ROOT,
                env={**base, **(env or {}), **(gate.env() if gate is not None else {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=group,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    async def wait_up(self, client: EngineClient, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"engine exited:\n{self.output()}"
            try:
                await client.health()
                return
            except EngineUnavailable:
                await asyncio.sleep(0.2)
        raise AssertionError(f"engine not up after {timeout} s:\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


async def wait_terminal(client: EngineClient, job_ids: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = [await client.job(j) for j in job_ids]
        if all(v.state.terminal for v in views):
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"jobs not finished: {[(v.id, v.state) for v in views]}")


async def test_kill_restart_loses_nothing_and_sigterm_drains(tmp_path: Path):
    cfg = write_config(tmp_path, free_port())
    log = tmp_path / "engine.log"
    client = EngineClient(f"http://127.0.0.1:{cfg.read_text().split('port = ')[1].split()[0]}", SECRET)
    gate = StepGate.create(tmp_path / "gate")  # closed: the first job waits after its first step
    engines: list[Engine] = []
    collected: list[Event] = []
    finished: set[str] = set()
    all_finished = asyncio.Event()

    async def collect() -> None:
        # One stream across the crash: the client reconnects and resumes after the last id.
        async for event in client.events():
            collected.append(event)
            if event.type is EventType.FINISHED:
                finished.add(event.job_id)
                if finished >= {long_id, *queued}:
                    all_finished.set()

    try:
        engines.append(Engine(cfg, log, gate=gate))
        await engines[-1].wait_up(client)
        # Submits are durable from the first moment the API answers, models loaded or not.
        long_id = (await client.submit(request(user="1", steps=3, scare_steps=0))).job.id
        queued = [(await client.submit(request(user=u))).job.id for u in ("2", "3")]
        collector = asyncio.create_task(collect())
        held = await gate.held(passed=0)
        assert held.job_id == long_id
        engines[-1].kill()  # kill -9 in the middle of the long job, held after its step 1

        gate.release()
        engines.append(Engine(cfg, log, gate=gate))
        await engines[-1].wait_up(client)
        await wait_terminal(client, [long_id, *queued])
        views = {j: await client.job(j) for j in [long_id, *queued]}
        assert all(v.state is JobState.SUCCEEDED for v in views.values()), [v.error for v in views.values()]
        assert views[long_id].attempts == 2

        mine = [e for e in collected if e.job_id == long_id]
        types = [e.type for e in mine]
        assert EventType.INTERRUPTED in types
        interrupted = mine[types.index(EventType.INTERRUPTED)]
        assert interrupted.data["retried"] is True
        after = types[types.index(EventType.INTERRUPTED) :]
        assert after[:2] == [EventType.INTERRUPTED, EventType.STARTED] and after[-1] is EventType.FINISHED
        # Queued jobs kept their order: after the restart the interrupted job ran first, then the others.
        restarted = [e.job_id for e in collected if e.type is EventType.STARTED and e.id > interrupted.id]
        assert restarted == [long_id, *queued]
        # The stream that lived through the crash missed nothing and repeated nothing.
        await asyncio.wait_for(all_finished.wait(), 60)
        everything = []
        async for event in client.events():
            everything.append(event)
            if event.id >= collected[-1].id:
                break
        assert [e.id for e in collected] == sorted({e.id for e in collected})
        assert collected == everything[: len(collected)]

        # `--check` says ready.
        check = subprocess.run(
            [sys.executable, "-m", "spooky.cli", "engine", "--config", str(cfg), "--check"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0 and '"ready"' in check.stdout, check.stderr

        # SIGTERM during a job: draining, new submits refused, exit within the bound, job kept.
        # The job is held at the gate, so it outlives the drain timeout on any machine.
        gate.hold()
        drained_id = (await client.submit(request(user="4", steps=3, scare_steps=0))).job.id
        assert (await gate.held()).job_id == drained_id
        engines[-1].proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):  # the signal is handled asynchronously
            while (await client.health()).status != "draining":
                await asyncio.sleep(0.05)
        with pytest.raises(EngineRefused) as e:
            await client.submit(request(user="5"))
        assert e.value.refusal.code is RefusalCode.NOT_READY
        code = await asyncio.to_thread(engines[-1].proc.wait, DRAIN_TIMEOUT_S + 30)
        assert code == 0, engines[-1].output()
        collector.cancel()
    finally:
        for engine in engines:
            engine.kill()
        await client.close()

    db = sqlite3.connect(f"file:{tmp_path / 'data' / 'engine.sqlite3'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT state, attempts FROM jobs WHERE id = ?", (drained_id,)).fetchone()
        last_type = db.execute(
            "SELECT type FROM events WHERE job_id = ? ORDER BY id DESC LIMIT 1", (drained_id,)
        ).fetchone()[0]
    finally:
        db.close()
    assert (*row, last_type) == ("queued", 0, "interrupted")
    check = subprocess.run(
        [sys.executable, "-m", "spooky.cli", "engine", "--config", str(cfg), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 2 and "not reachable" in check.stderr
    assert "job finished" in log.read_text()
