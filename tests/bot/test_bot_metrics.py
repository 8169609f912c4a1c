"""The bot's Prometheus endpoint counts commands, acknowledgements and Discord API calls."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from bot_helpers import ephemeral_replies
from fake_discord.server import FakeDiscord
from prometheus_client.parser import text_string_to_metric_families
from support import free_port

from bot.errors import ENGINE_DOWN

if TYPE_CHECKING:
    from conftest import Bots


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


async def test_metrics_count_commands_acks_and_discord_calls(bots: Bots, fake: FakeDiscord) -> None:
    port = free_port()
    await bots.start(metrics_port=port)
    inter = await fake.invoke("queue", {})
    await asyncio.wait_for(inter.acked.wait(), 3)
    (reply,) = await fake.wait_for(lambda: ephemeral_replies(fake, inter), 10)
    assert reply.startswith("**Render queue**: "), reply

    text = await scrape(port)
    assert sample(text, "spooky_bot_commands_total", command="queue", outcome="ok") == 1
    acks = sample(text, "spooky_bot_ack_seconds_count")
    assert acks >= 1
    assert 0 <= sample(text, "spooky_bot_ack_seconds_sum") / acks < 3
    # Login, command sync, the callback and the reply all went through the traced session.
    assert sample(text, "spooky_bot_discord_requests_total", method="POST", status="2xx") >= 2


async def test_metrics_count_engine_outages(bots: Bots, fake: FakeDiscord) -> None:
    port = free_port()
    await bots.start(metrics_port=port, engine_url=f"http://127.0.0.1:{free_port()}")
    inter = await fake.invoke("spooky", {"prompt": "anyone home?"})
    assert await fake.wait_for(lambda: ephemeral_replies(fake, inter), 10) == [ENGINE_DOWN]
    text = await scrape(port)
    assert sample(text, "spooky_bot_engine_unreachable_total") == 1
    assert sample(text, "spooky_bot_commands_total", command="spooky", outcome="ok") == 1
