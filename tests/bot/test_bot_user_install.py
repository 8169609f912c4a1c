"""A member who installed the app for themselves (issue 19): in a server that never invited the bot
and in a group DM, everything goes through the interaction; past the token the result arrives by
DM, or, with DMs closed, waits in /queue until its button posts it. Never a channel endpoint where
the bot is not a member."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
from bot_helpers import (
    RENDER_TIMEOUT_S,
    WEBHOOK_EDIT,
    buttons,
    delivered,
    ephemeral_messages,
    filenames,
    final_of,
    job_of,
    noise_png,
    uploaded,
)
from fake_discord.server import FakeDiscord

from bot.delivery_state import DeliveryState
from spooky.contract import JobView
from spooky.engine_client import EngineClient

if TYPE_CHECKING:
    from conftest import Bots
    from testgate import StepGate


def _in_channel(fake: FakeDiscord, channel_id: str, job_id: str) -> dict[str, Any] | None:
    """The bot's own message of a job in a channel (found by the job id on its buttons)."""
    for message in fake.messages.values():
        here = message["channel_id"] == channel_id and message["via"] == "channel"
        ours = any(b.endswith(":" + job_id) for b in buttons(message))
        if here and ours and not message.get("deleted") and filenames(message):
            return message
    return None


def _channel_calls(fake: FakeDiscord) -> list[str]:
    """Every channel endpoint the bot used, as "METHOD path"."""
    return [f"{r.method} {r.path}" for r in fake.requests if r.path.startswith("/channels/")]


async def _state(engine: EngineClient, job_id: str, **wanted: object) -> JobView:
    """The job once its stored DeliveryState has these values."""
    async with asyncio.timeout(RENDER_TIMEOUT_S):
        while True:
            job = await engine.job(job_id)
            state = DeliveryState.from_client(job.request.client)
            if all(getattr(state, k) == v for k, v in wanted.items()):
                return job
            await asyncio.sleep(0.1)


async def test_in_a_server_without_the_bot_the_result_past_the_token_arrives_by_dm(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient, gate: StepGate
) -> None:
    offset = [0.0]  # how far the bot's clock is ahead: the token ages when the test says so
    bot = await bots.start(clock=lambda: time.time() + offset[0], progress_interval_s=0.2)
    fake.user_installs.add(fake.member.id)
    elsewhere = fake.foreign_server()
    # The bot's first edit is answered only once its token has aged past interaction_ttl_s.
    held = fake.hold(WEBHOOK_EDIT, method="PATCH")
    photo = fake.add_attachment("me.png", "image/png", noise_png(80, 64))
    inter = await fake.invoke("spooky", {"prompt": "a ghoul of me", "image": photo}, channel_id=elsewhere)
    await asyncio.wait_for(inter.acked.wait(), 3)
    job = await job_of(engine_client, inter)
    # No server install: the engine's default limits, per member; the real place kept for delivery.
    assert job.request.requester.guild_id is None
    state = DeliveryState.from_client(job.request.client)
    assert (state.guild_id, state.channel_id, state.fallback) == (fake.guild_of(elsewhere), elsewhere, "dm")
    await gate.held()  # the render waits after its first step
    await asyncio.wait_for(held.reached.wait(), 30)
    offset[0] = bot.config.interaction_ttl_s + 1
    held.release()
    # Its steps go on past the token, each with an edit window to be shown in (it is not).
    await asyncio.sleep(4 * bot.config.progress_interval_s)
    gate.allow(1)
    await asyncio.sleep(4 * bot.config.progress_interval_s)
    gate.release()

    # The result comes to the member by DM, with its buttons, saying where it came from.
    dm = await fake.wait_for(lambda: fake.dm_channels.get(fake.member.id), RENDER_TIMEOUT_S)
    final = await fake.wait_for(lambda: _in_channel(fake, dm, job.id), RENDER_TIMEOUT_S)
    assert filenames(final) == ["spooky.png"]
    assert sorted(buttons(final)) == [f"spooky:nightmare:{job.id}", f"spooky:reroll:{job.id}"]
    link = f"https://discord.com/channels/{fake.guild_of(elsewhere)}/{elsewhere}/{inter.original_id}"
    assert final["content"].startswith(f"📬 From your render in {link}"), final["content"]
    await delivered(engine_client, job.id)
    # Never a channel endpoint where the bot is not a member (so never a 403), and progress past
    # the token was not sent to the DMs: one DM, the result.
    assert _channel_calls(fake) == [f"POST /channels/{dm}/messages"]
    assert not [r for r in fake.requests if r.status == 403]

    # Its buttons work from the DM (a fresh interaction there, the bot's own DM).
    offset[0] = 0.0
    night = await fake.click(final["id"], f"spooky:nightmare:{job.id}")
    video = await fake.wait_for(lambda: final_of(fake, night), RENDER_TIMEOUT_S)
    assert filenames(video) == ["nightmare.mp4"] and video["channel_id"] == dm


async def test_with_dms_closed_the_result_waits_in_queue_and_its_button_posts_it(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    offset = [0.0]
    bot = await bots.start(clock=lambda: time.time() + offset[0])
    fake.user_installs.add(fake.member.id)
    fake.dms_closed.add(fake.member.id)
    group = fake.group_dm(fake.member, fake.other)
    held = fake.hold(WEBHOOK_EDIT, method="PATCH")
    inter = await fake.invoke("spooky", {"prompt": "a closed-door ghost"}, channel_id=group)
    job = await job_of(engine_client, inter)
    assert inter.payload["context"] == 2 and job.request.requester.guild_id is None
    await asyncio.wait_for(held.reached.wait(), 30)
    offset[0] = bot.config.interaction_ttl_s + 1
    held.release()

    # Discord refuses the DM (50007): the result is held for the member, not delivered, not lost.
    job = await _state(engine_client, job.id, held="dms_closed")
    assert job.state.terminal and not job.delivered
    refused = [r for r in fake.requests if r.status == 403]
    dm = fake.dm_channels[fake.member.id]
    assert refused and all((r.method, r.path) == ("POST", f"/channels/{dm}/messages") for r in refused)
    assert not [c for c in _channel_calls(fake) if f"/channels/{group}/" in c]

    # A restarted bot does not try again on its own: it waits for the member.
    await bots.stop(bot)
    offset[0] = 0.0
    bot = await bots.start(clock=lambda: time.time() + offset[0])
    queue = await fake.invoke("queue", {}, channel_id=group)
    (listing,) = await fake.wait_for(lambda: ephemeral_messages(fake, queue), 30)
    assert "**Waiting for you**" in listing["content"] and f"`{job.id}`" in listing["content"]
    assert buttons(listing) == [f"spooky:deliver:{job.id}"]
    assert len([r for r in fake.requests if r.status == 403]) == len(refused)

    # Someone else cannot press it (Discord shows an ephemeral message to its member only), the
    # member can: the result is posted through that fresh interaction, in the group DM.
    with pytest.raises(AssertionError, match="ephemeral"):
        await fake.click(listing["id"], f"spooky:deliver:{job.id}", user=fake.other)
    post = await fake.click(listing["id"], f"spooky:deliver:{job.id}")
    await asyncio.wait_for(post.acked.wait(), 3)
    assert post.callback_type == 5
    final = await fake.wait_for(lambda: final_of(fake, post), RENDER_TIMEOUT_S)
    assert filenames(final) == ["stylegan.png", "spooky.png"] and final["channel_id"] == group
    assert final["via"] == "interaction"
    await delivered(engine_client, job.id)
    stored = DeliveryState.from_client((await engine_client.job(job.id)).request.client)
    assert (stored.held, stored.token, stored.channel_id) == (None, post.token, group)
    assert not [c for c in _channel_calls(fake) if f"/channels/{group}/" in c]

    # Delivered: /queue no longer offers it.
    again = await fake.invoke("queue", {}, channel_id=group)
    (listing,) = await fake.wait_for(lambda: ephemeral_messages(fake, again), 30)
    assert "Waiting for you" not in listing["content"] and buttons(listing) == []


async def test_a_video_in_a_group_dm_fits_the_interactions_upload_limit(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    await bots.start()
    fake.user_installs.add(fake.member.id)
    group = fake.group_dm(fake.member, fake.other)
    limit = 100 * 1024  # what this interaction allows (smaller than the server's would be)
    image = fake.add_attachment("face.png", "image/png", noise_png(128))
    inter = await fake.invoke(
        "nightmare", {"image": image, "frames": 30}, channel_id=group, attachment_size_limit=limit
    )
    final = await fake.wait_for(lambda: final_of(fake, inter), RENDER_TIMEOUT_S)
    assert filenames(final) == ["nightmare.mp4"], final["content"]
    assert (await job_of(engine_client, inter)).request.max_bytes == limit
    # Fitted by the engine before the post: Discord never had to refuse one.
    posts = [r for r in fake.requests if "nightmare.mp4" in uploaded(r)]
    assert [r.status for r in posts] == [200] and posts[0].upload_bytes <= limit
    assert not _channel_calls(fake)


async def test_a_server_channel_that_refuses_the_bot_sends_the_result_to_the_dms(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    offset = [0.0]
    bot = await bots.start(clock=lambda: time.time() + offset[0])
    channel = fake.channel_ids[0]
    # The server installed the app, but by the time the token is spent its channel refuses the bot.
    fake.inject(rf"^/channels/{channel}/messages$", method="POST", status=403, code=50001, times=5)
    held = fake.hold(WEBHOOK_EDIT, method="PATCH")
    inter = await fake.invoke("spooky", {"prompt": "a locked-out ghost"})
    job = await job_of(engine_client, inter)
    assert DeliveryState.from_client(job.request.client).fallback == "channel"
    await asyncio.wait_for(held.reached.wait(), 30)
    offset[0] = bot.config.interaction_ttl_s + 1
    held.release()

    dm = await fake.wait_for(lambda: fake.dm_channels.get(fake.member.id), RENDER_TIMEOUT_S)
    final = await fake.wait_for(lambda: _in_channel(fake, dm, job.id), RENDER_TIMEOUT_S)
    assert filenames(final) == ["stylegan.png", "spooky.png"] and final["content"].startswith(
        "📬 From your render"
    )
    await delivered(engine_client, job.id)
    assert [c for c in _channel_calls(fake) if f"/channels/{channel}/" in c] == [
        f"POST /channels/{channel}/messages"
    ]  # refused once; then the DMs
    assert DeliveryState.from_client((await engine_client.job(job.id)).request.client).fallback == "dm"
