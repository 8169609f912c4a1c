"""What each role serves: a worker's port answers only health and metrics; an API node counts CLIP
tokens without torch exactly as open_clip's tokenizer does; roles apart need PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from service_helpers import SECRET, make_settings, request

from engine.service.app import EngineService
from engine.service.clip_tokens import count_tokens
from spooky.engine_client import EngineClient, EngineRequestError
from spooky.errors import ConfigError

PROMPTS = [
    "dracula pale fangs",
    "A  Ghost!!  in &amp; the  <end_of_text> fog 42",
    "Ünïcödé façade 🎃👻 naïve",
    "x" * 300,
    "it's they're we've I'm you'll he'd",
    "日本語のプロンプト",
    "zombie:1.5 | witch:-0.5",
    "  leading and trailing\tspaces\n",
    "mojibake â€™ fixed by ftfy",
]


@pytest.mark.parametrize("text", PROMPTS)
def test_the_torch_free_count_is_open_clips(text: str):
    from open_clip.tokenizer import SimpleTokenizer

    assert count_tokens(text) == len(SimpleTokenizer().encode(text))


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
