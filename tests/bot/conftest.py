"""Fixtures of the bot tests: the real engine (tiny preset, a child process), the fake Discord, bots.

The engine runs once per session as `python -m spooky.cli engine` so the bot under test shares
nothing with it but HTTP, as in production. Each test gets its own fake Discord (hence its own
application, guild and limits) and its own bot data folder.

The engine has the test step gate (tests/testgate.py, its step hook), open: a test that needs a render to
outlive a bot event takes the `gate` fixture, which closes it while the engine is idle, so the
test's render waits after each step until the test allows the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from bot_helpers import RENDER_TIMEOUT_S
from fake_discord.server import FakeDiscord
from support import free_port
from testgate import StepGate

from bot.app import SpookyBot
from spooky.config import Settings
from spooky.contract import JobState
from spooky.engine_client import EngineClient, EngineRequestError

ROOT = Path(__file__).resolve().parents[2]
SECRET = "bot-tests-secret"

#: Pipeline of the session's engine: toy sizes, but enough steps for progress edits and stills.
ENGINE_TOML = """
[models]
preset = "tiny"
device = "cpu"

[pipeline]
stylegan_steps = 4
still_every = 2
scare_steps = 2
cutouts = 2
nightmare_frames = 6
# A large step makes consecutive frames differ, so videos have a size worth fitting.
nightmare_lr = 1.0

[engine]
port = {port}
data_dir = "{data}"
drain_timeout_s = 2

[limits]
cooldown_s = 0
max_jobs_per_user = 50
max_queue_per_server = 200
max_steps = 400
"""


@dataclass
class EngineProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    gate: StepGate  # open unless a test holds it (the `gate` fixture)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _health(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url + "/v1/health", timeout=2) as resp:
            return json.loads(resp.read())["status"]
    except urllib.error.HTTPError as e:
        return json.loads(e.read()).get("status")
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """The real engine on the tiny preset, ready to render."""
    tmp = tmp_path_factory.mktemp("engine")
    port = free_port()
    cfg = tmp / "config.toml"
    cfg.write_text(ENGINE_TOML.format(port=port, data=tmp / "data"), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_")}
    # One torch thread: the tests share two cores with the engine, and threads fight over them.
    env |= {"SPOOKY_ENGINE_SECRET": SECRET, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # Shared by every test of the session: open, and closed only by the `gate` fixture.
    gate = StepGate.create(tmp / "gate", open=True, timeout_s=RENDER_TIMEOUT_S)
    env |= gate.env()
    log = tmp / "engine.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spooky.cli", "engine", "--config", str(cfg), *gate.args()],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    handle = EngineProcess(f"http://127.0.0.1:{port}", proc, log, gate)
    try:
        deadline = time.monotonic() + 180
        while _health(handle.url) != "ready":
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the engine did not become ready:\n{handle.output()}")
            time.sleep(0.2)
        yield handle
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def gate(engine: EngineProcess, engine_client: EngineClient) -> AsyncIterator[StepGate]:
    """The engine's step gate, closed: the test's render waits after each step until allowed.

    Closed only once the engine is idle, so no step of another test's job is held; opened again
    at the end whatever the test did, so the next test's renders run freely.
    """
    async with asyncio.timeout(RENDER_TIMEOUT_S):
        while (view := await engine_client.queue()).running is not None or view.length:
            await asyncio.sleep(0.05)
    engine.gate.hold()
    try:
        yield engine.gate
    finally:
        engine.gate.release()


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def engine_client(engine: EngineProcess) -> AsyncIterator[EngineClient]:
    async with EngineClient(engine.url, SECRET) as client:
        yield client


@dataclass
class Bots:
    """Starts bots against the fake Discord and the engine; closes them all at the end."""

    fake: FakeDiscord
    engine_url: str
    data_dir: Path
    running: list[tuple[SpookyBot, asyncio.Task[None], EngineClient]] = field(default_factory=list)

    def settings(self, **bot: Any) -> Settings:
        section = {
            "token": self.fake.bot_token,
            "engine_url": self.engine_url,
            "api_base": self.fake.api_base,
            "gateway_url": self.fake.gateway_url,
            "data_dir": str(self.data_dir),
        } | bot
        return Settings.model_validate({"bot": section, "engine": {"secret": SECRET}})

    async def start(self, *, clock: Callable[[], float] = time.time, **bot: Any) -> SpookyBot:
        """A bot with these `[bot]` settings; `clock` is the wall clock it judges token age by."""
        settings = self.settings(**bot)
        client = EngineClient(settings.bot.engine_url, SECRET, timeout=5.0)
        instance = SpookyBot(settings, client, clock=clock)
        sessions = self.fake.ready_sent
        task = asyncio.create_task(instance.start(self.fake.bot_token))
        self.running.append((instance, task, client))
        async with asyncio.timeout(30):
            while self.fake.ready_sent == sessions or not self.fake.commands:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        return instance

    async def stop(self, instance: SpookyBot) -> None:
        for entry in list(self.running):
            if entry[0] is instance:
                await self._close(*entry)
                self.running.remove(entry)

    async def _close(self, instance: SpookyBot, task: asyncio.Task[None], client: EngineClient) -> None:
        await instance.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()

    async def close_all(self) -> None:
        for entry in self.running:
            await self._close(*entry)
        self.running.clear()


@pytest.fixture
async def bots(
    fake: FakeDiscord, engine: EngineProcess, engine_client: EngineClient, tmp_path: Path
) -> AsyncIterator[Bots]:
    runner = Bots(fake, engine.url, tmp_path / "bot")
    yield runner
    await runner.close_all()
    # Leave the shared engine idle for the next test: cancel what this test's members left behind
    # (their ids are this test's fake's own), in its server or anywhere without a server install.
    for user in fake.users:
        for job in await engine_client.jobs(user_id=user.id, limit=1000):
            if job.state in (JobState.QUEUED, JobState.RUNNING):
                with contextlib.suppress(EngineRequestError):
                    await engine_client.cancel(job.id, fake.moderator.id, is_moderator=True)
