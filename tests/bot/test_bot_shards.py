"""Two bot processes, one shard each: each delivers the jobs of its own shard's servers, once."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from bot_helpers import RENDER_TIMEOUT_S, WEBHOOK_EDIT, delivered, filenames, final_of, job_of
from fake_discord.server import FakeDiscord

from spooky.engine_client import EngineClient

if TYPE_CHECKING:
    from conftest import Bots


async def test_each_shard_process_delivers_only_its_servers_jobs(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    home = fake.shard_of(fake.guild_id, 2)
    away_channel = fake.add_guild(shard=1 - home, shard_count=2)
    mine = await bots.start(shard_count=2, shard_ids=[home])
    theirs = await bots.start(shard_count=2, shard_ids=[1 - home])
    assert mine.shard_count == 2 and list(mine.shard_ids or []) == [home]

    # A command on the other shard's server reaches that shard's process only.
    held = fake.hold(WEBHOOK_EDIT, method="PATCH")
    away = await fake.invoke("spooky", {"prompt": "a ghost abroad"}, channel_id=away_channel)
    assert fake.sessions_used[-1] == (1 - home, 2)
    away_job = await job_of(engine_client, away)
    assert away_job.request.requester.guild_id == fake.guild_of(away_channel)
    # Its process goes away while its first edit waits; the job finishes without it.
    await asyncio.wait_for(held.reached.wait(), 30)
    await bots.stop(theirs)
    held.release()
    async with asyncio.timeout(RENDER_TIMEOUT_S):
        while not (await engine_client.job(away_job.id)).state.terminal:
            await asyncio.sleep(0.1)

    # The remaining process delivers its own server's job; it has read the other job's final
    # event before this one's (one ordered stream) and left that job alone.
    home_inter = await fake.invoke("spooky", {"prompt": "a ghost at home"})
    assert fake.sessions_used[-1] == (home, 2)
    home_final = await fake.wait_for(lambda: final_of(fake, home_inter), RENDER_TIMEOUT_S)
    home_job = await job_of(engine_client, home_inter)
    await delivered(engine_client, home_job.id)
    assert mine.tracker.delivered == [home_job.id]
    assert not (await engine_client.job(away_job.id)).delivered
    assert final_of(fake, away) is None

    # The other shard's process, started again, delivers what finished while it was away.
    again = await bots.start(shard_count=2, shard_ids=[1 - home])
    away_final = await fake.wait_for(lambda: final_of(fake, away), 60)
    await delivered(engine_client, away_job.id)
    assert again.tracker.delivered == [away_job.id] and mine.tracker.delivered == [home_job.id]
    assert filenames(away_final) == filenames(home_final) == ["stylegan.png", "spooky.png"]
    # Each set of shards keeps its own place in the engine's event stream.
    cursors = sorted(p.name for p in bots.data_dir.glob("engine-events*.cursor"))
    assert cursors == sorted(f"engine-events.shards-{s}-of-2.cursor" for s in (0, 1))
