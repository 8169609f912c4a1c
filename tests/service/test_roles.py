"""What each role serves: a worker's port answers only health and metrics; roles apart need
PostgreSQL. (An API node's torch-free token count: tests/engine/test_clip_tokens.py;
that it imports no torch: tests/service/test_farm.py.)"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from service_helpers import SECRET, make_settings, request

from engine.service.app import EngineService
from spooky.engine_client import EngineClient, EngineRequestError
from spooky.errors import ConfigError


def test_split_roles_refuse_the_sqlite_file(tmp_path: Path):
    for role in ("api", "worker"):
        with pytest.raises(ConfigError, match="database_url"):
            EngineService(make_settings(tmp_path / "data", engine={"role": role}))


async def test_a_worker_serves_only_health_and_metrics(tmp_path: Path, pg_url: str, tiny_models):
    settings = make_settings(tmp_path / "data", engine={"role": "worker", "database_url": pg_url})
    async with EngineService(settings, models=tiny_models, port=0) as service:
        await service.ready.wait()
        async with EngineClient(service.url, SECRET) as client:
            assert (await client.health()).status == "ready"
            with pytest.raises(EngineRequestError) as e:
                await client.submit(request())
            assert e.value.status == 404 and "worker" in str(e.value)
        headers = {"Authorization": f"Bearer {SECRET}"}
        async with aiohttp.ClientSession() as http, http.get(f"{service.url}/metrics", headers=headers) as r:
            assert r.status == 200 and "spooky" in await r.text()
