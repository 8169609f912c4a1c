"""Shared helpers of the service tests: settings for a toy engine in tmp_path, a running in-process
engine with a client, and a read-only dump of the engine's SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from spooky.config import Settings
from spooky.contract import JobKind, JobRequest, Requester
from spooky.engine_client import EngineClient

SECRET = "test-secret-for-the-engine"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def make_settings(data_dir: Path, **sections: dict[str, Any]) -> Settings:
    """A toy engine: tiny models, 1 cutout, a few steps, no cooldown (tests set what they need)."""
    base: dict[str, Any] = {
        "engine": {"secret": SECRET, "data_dir": str(data_dir)},
        "models": {"preset": "tiny"},
        "pipeline": {
            "cutouts": 1,
            "still_every": 2,
            "stylegan_steps": 2,
            "scare_steps": 1,
            "nightmare_frames": 3,
        },
        "limits": {"cooldown_s": 0, "max_jobs_per_user": 5, "max_queue_per_server": 50},
    }
    return Settings.model_validate(_merge(base, sections))


def request(
    kind: str = "spooky",
    prompt: str = "dracula pale fangs",
    *,
    user: str = "1",
    guild: str | None = "100",
    channel: str = "200",
    moderator: bool = False,
    **fields: Any,
) -> JobRequest:
    return JobRequest(
        kind=JobKind(kind),
        prompt=prompt,
        requester=Requester(user_id=user, channel_id=channel, guild_id=guild, is_moderator=moderator),
        **fields,
    )


@asynccontextmanager
async def running_engine(
    settings: Settings, models: Any = None, *, autoload: bool = True, step_hook: Any = None
) -> AsyncIterator[tuple[Any, EngineClient]]:
    """An in-process engine on a free port and a client of it; ready when models are given.
    `step_hook`: the worker's (a test gate's `engine_side()`)."""
    from engine.service.app import EngineService

    service = EngineService(settings, models=models, port=0, autoload=autoload, step_hook=step_hook)
    await service.start()
    client = EngineClient(service.url, SECRET, timeout=30)
    try:
        if autoload:
            await asyncio.wait_for(service.ready.wait(), 120)
        yield service, client
    finally:
        await client.close()
        await service.stop()


def db_dump(path: Path) -> list[str]:
    """Every row of the engine's database, read through a separate read-only connection."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(con.iterdump())
    finally:
        con.close()
