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


#: Requests every node must refuse at submit, whatever its role and whether its models are loaded.
BAD = [
    {"size": (17, 16)},  # not a multiple of the VQGAN's factor
    {"size": (4096, 4096)},  # over the largest canvas side
    {"steps": 1001},
    {"prompt": "ghost " * 80},  # over CLIP's tokens
    {"scare_prompt": "ghost:1|"},
]


async def _answers(service: EngineService) -> list[tuple[int, str]]:
    """(status, the refusal's message or the error's code) of each BAD request, sent as raw JSON
    (the client's own models would refuse most of them before sending)."""
    out = []
    headers = {"Authorization": f"Bearer {SECRET}"}
    async with aiohttp.ClientSession() as http:
        for fields in BAD:
            body = {**request().model_dump(mode="json"), **fields}
            async with http.post(f"{service.url}/v1/jobs", json=body, headers=headers) as resp:
                answer = await resp.json()
            said = answer["refusal"]["message"] if "refusal" in answer else answer["error"]["code"]
            out.append((resp.status, said))
    return out


async def test_every_node_refuses_at_submit_what_a_worker_would_refuse(
    tmp_path: Path, pg_url: str, tiny_models
):
    """An API node (no models), a single engine still loading, and one with its models loaded give
    the same answer to the same bad request: a 4xx at submit, never a job that fails later."""
    api = make_settings(tmp_path / "api", engine={"role": "api", "database_url": pg_url})
    async with EngineService(api, port=0) as node:
        on_api = await _answers(node)
    async with EngineService(make_settings(tmp_path / "one"), port=0, autoload=False) as loading:
        while_loading = await _answers(loading)
    async with EngineService(make_settings(tmp_path / "two"), models=tiny_models, port=0) as ready:
        await ready.ready.wait()
        loaded = await _answers(ready)
    assert on_api == while_loading == loaded
    assert all(400 <= status < 500 for status, _ in on_api)
    assert "multiples of 4" in on_api[0][1]
