"""A bot process killed (SIGKILL) at the worst moments, then started again: nothing posted twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bot_helpers import RENDER_TIMEOUT_S, buttons, final_of, job_of, original
from conftest import ROOT, SECRET
from engine_proxy import EngineProxy
from fake_discord.server import FakeDiscord

from bot.messenger import CONTINUED
from spooky.engine_client import EngineClient

if TYPE_CHECKING:
    from conftest import Bots

#: Tokens are never used: every message goes through the channel, as after Discord's 15 minutes.
SPENT_TOKEN_TTL_S = 0.001

CHANNEL_POST = r"^/channels/\d+/messages$"


def _bot_process(bots: Bots, tmp: Path) -> subprocess.Popen[bytes]:
    """`spooky bot` in a child process against the fake Discord and the session's engine."""
    config = tmp / "bot.toml"
    config.write_text(
        "[bot]\n"
        f'engine_url = "{bots.engine_url}"\n'
        f'api_base = "{bots.fake.api_base}"\n'
        f'gateway_url = "{bots.fake.gateway_url}"\n'
        f'data_dir = "{bots.data_dir}"\n'
        f"interaction_ttl_s = {SPENT_TOKEN_TTL_S}\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_")}
    env |= {"DISCORD_TOKEN": bots.fake.bot_token, "SPOOKY_ENGINE_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    log = open(tmp / "bot.log", "wb")  # noqa: SIM115  # the child writes it; closed with the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "spooky.cli", "bot", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return proc


async def test_bot_killed_while_posting_its_channel_message_posts_it_once(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient, tmp_path: Path
) -> None:
    # Discord creates the message; its answer never reaches the bot, which dies waiting for it.
    held = fake.hold(CHANNEL_POST, method="POST")
    proc = _bot_process(bots, tmp_path)
    try:
        await fake.wait_for(lambda: (fake.ready_sent and fake.commands) or proc.poll() is not None, 60)
        assert proc.poll() is None, (tmp_path / "bot.log").read_text(errors="replace")
        inter = await fake.invoke("spooky", {"prompt": "a ghost that dies mid-sentence"})
        await asyncio.wait_for(held.reached.wait(), 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    held.release()
    assert held.record is not None and isinstance(held.record.json, dict)
    first_post = held.record.json
    (job_id,) = [b.rsplit(":", 1)[1] for b in buttons(first_post) if b.startswith("spooky:cancel:")]
    posted = [m for m in fake.messages.values() if m["via"] == "channel"]
    assert len(posted) == 1 and buttons(posted[0]) == [f"spooky:cancel:{job_id}"]
    assert "channel_message_id" not in (await engine_client.job(job_id)).request.client

    # Started again, the bot posts with the same nonce: Discord hands back the message it has.
    await bots.start(interaction_ttl_s=SPENT_TOKEN_TTL_S)
    final = await fake.wait_for(lambda: final_of(fake, inter, job_id), RENDER_TIMEOUT_S)
    posts = [r for r in fake.requests if r.method == "POST" and r.path.startswith("/channels/")]
    assert len(posts) >= 2, "the restarted bot did not post again"
    assert [m for m in fake.messages.values() if m["via"] == "channel"] == [final]
    assert {(r.json["nonce"], r.json["enforce_nonce"]) for r in posts} == {(first_post["nonce"], True)}
    assert final["id"] == posted[0]["id"] and "spooky:cancel:" not in " ".join(buttons(final))
    assert (await engine_client.job(job_id)).request.client["channel_message_id"] == final["id"]
    await fake.wait_for(lambda: original(fake, inter)["content"] == CONTINUED, 10)
    async with asyncio.timeout(10):
        while not (await engine_client.job(job_id)).delivered:
            await asyncio.sleep(0.1)


async def test_channel_message_id_store_is_retried_until_the_engine_takes_it(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    proxy = EngineProxy(bots.engine_url)
    await proxy.start()
    try:
        # The engine is unavailable for the first two attempts to store the message id.
        outage = proxy.fail("PATCH", r"^/v1/jobs/[^/]+/client$", times=2)
        await bots.start(engine_url=proxy.url, interaction_ttl_s=SPENT_TOKEN_TTL_S)
        inter = await fake.invoke("spooky", {"prompt": "a ghost the engine forgot"})
        job = await job_of(engine_client, inter)
        final = await fake.wait_for(lambda: final_of(fake, inter, job.id), RENDER_TIMEOUT_S)
        assert final["via"] == "channel" and len(outage.seen) == 2
        stores = [r for r in proxy.requests if r[0] == "PATCH" and r[1].endswith("/client")]
        assert [status for *_, status in stores][:3] == [503, 503, 200]
        # A bot restarted now finds the message it must edit: no second post, ever.
        assert (await engine_client.job(job.id)).request.client["channel_message_id"] == final["id"]
    finally:
        await bots.close_all()
        await proxy.stop()
