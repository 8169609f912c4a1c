"""The bot end to end: real discord.py client, fake Discord API, real engine (tiny preset)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import TYPE_CHECKING

import pytest
from bot_helpers import (
    RENDER_TIMEOUT_S,
    WEBHOOK_EDIT,
    buttons,
    ephemeral_replies,
    filenames,
    final_of,
    job_id_of,
    job_of,
    noise_png,
    original,
    probe_video,
    uploaded,
    webhook_edits,
)
from fake_discord.server import FakeDiscord
from fake_discord.state import PERM_ALL_MEMBER, PERM_MANAGE_GUILD, Interaction, Recorded
from support import free_port

from bot import tracker as tracker_module
from bot.errors import ENGINE_DOWN, UNEXPECTED, NotModerator
from bot.messenger import CONTINUED
from bot.progress import STAGE_LABELS
from bot.text import size
from spooky.contract import Event, EventType, JobState
from spooky.engine_client import EngineClient

if TYPE_CHECKING:
    from conftest import Bots
    from testgate import StepGate

MOD = PERM_ALL_MEMBER | PERM_MANAGE_GUILD

NOT_MODERATOR = str(NotModerator())
PAUSED = "rendering is paused on this server; a moderator can resume it with /limits set paused:false"

#: Steps of the progress test's render that the gate lets through one edit window at a time.
PROGRESS_STEPS = 3


async def test_spooky_progress_result_and_buttons(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient, gate: StepGate
) -> None:
    bot = await bots.start()
    prompt = "dracula @everyone <@&123> **bold** @here"
    inter = await fake.invoke("spooky", {"prompt": prompt, "seed": 7})

    # Acknowledged at once with a public "thinking…" that becomes the progress message.
    await asyncio.wait_for(inter.acked.wait(), 3)
    assert inter.callback_type == 5
    assert not (inter.callback or {}).get("data", {}).get("flags", 0) & 64

    # The render waits after each step until the bot has shown it, then takes one more: every edit
    # window has a new state to show, so only the throttle spaces the edits.
    job = await job_of(engine_client, inter)
    first = (await gate.held()).passed
    last_still, stills = None, 0
    for k in range(PROGRESS_STEPS):
        held = await gate.held(passed=first + k)
        line = f"{STAGE_LABELS[held.stage or '']}: step {held.step}/"
        edit = await fake.wait_for(lambda line=line: _edit_saying(fake, inter, line), RENDER_TIMEOUT_S)
        # The step's edit carries the step's still exactly when the engine made a new one.
        still = (await engine_client.job(job.id)).artifacts.get("still")
        carried = "still.png" in uploaded(edit)
        assert carried == (still is not None and still != last_still), (line, still, last_still)
        last_still, stills = still, stills + carried
        gate.allow(1)
    assert stills, f"no still in the first {PROGRESS_STEPS} steps"
    gate.release()

    final = await fake.wait_for(lambda: final_of(fake, inter), RENDER_TIMEOUT_S)
    edits = webhook_edits(fake, inter)
    # Edited in place, never more often than progress_interval_s (a little slack for the network).
    gaps = [b.at - a.at for a, b in itertools.pairwise(edits)]
    assert len(gaps) >= PROGRESS_STEPS and min(gaps) >= bot.config.progress_interval_s - 0.05, gaps
    progress = [r for r in edits[:-1] if isinstance(r.json, dict)]
    with_steps = [r.json["content"] for r in progress if "step" in r.json.get("content", "")]
    assert len(with_steps) >= PROGRESS_STEPS, with_steps
    assert all("%" in t and ("█" in t or "░" in t) for t in with_steps), with_steps
    assert all(any(b.startswith("spooky:cancel:") for b in _ids(r.json)) for r in progress)

    # The result: both stills, the seed, Nightmare and Reroll.
    assert filenames(final) == ["stylegan.png", "spooky.png"]
    for att in final["attachments"]:
        assert fake.files[att["id"]].startswith(b"\x89PNG")
    assert "seed **7**" in final["content"]
    job_id = job_id_of(final)
    assert sorted(buttons(final)) == [f"spooky:nightmare:{job_id}", f"spooky:reroll:{job_id}"]
    job = await engine_client.job(job_id)
    assert job.state is JobState.SUCCEEDED and job.delivered and job.result["seed"] == 7

    # The echoed prompt pings no one and shows as typed.
    for body in fake.message_payloads():
        assert body.get("allowed_mentions") == {"parse": []}, body
    assert "@everyone" not in final["content"] and "@here" not in final["content"]
    assert "<@&123>" not in final["content"]
    assert "\\*\\*bold\\*\\*" in final["content"]

    # Reroll: same prompt, new seed, a new progress message of its own.
    reroll = await fake.click(final["id"], f"spooky:reroll:{job_id}")
    await asyncio.wait_for(reroll.acked.wait(), 3)
    assert reroll.callback_type == 5
    rerolled = await fake.wait_for(lambda: final_of(fake, reroll), RENDER_TIMEOUT_S)
    again = await engine_client.job(job_id_of(rerolled))
    assert again.request.prompt == job.request.prompt and again.result["seed"] != 7
    assert filenames(rerolled) == ["stylegan.png", "spooky.png"]

    # Nightmare: animates the spooky still into an H.264 MP4 with the configured frames.
    nightmare = await fake.click(final["id"], f"spooky:nightmare:{job_id}")
    await asyncio.wait_for(nightmare.acked.wait(), 3)
    video_msg = await fake.wait_for(lambda: final_of(fake, nightmare), RENDER_TIMEOUT_S)
    assert filenames(video_msg) == ["nightmare.mp4"]
    codec, frames, _ = probe_video(fake.files[video_msg["attachments"][0]["id"]])
    assert (codec, frames) == ("h264", 6)
    assert buttons(video_msg) == []


def _edit_saying(fake: FakeDiscord, inter: Interaction, text: str) -> Recorded | None:
    """The bot's first edit of the interaction's message whose content has `text`."""
    for rec in webhook_edits(fake, inter):
        if isinstance(rec.json, dict) and text in rec.json.get("content", ""):
            return rec
    return None


def _ids(body: dict) -> list[str]:
    return [c.get("custom_id", "") for row in body.get("components", []) for c in row.get("components", [])]


async def test_cancel_button_and_command(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient, gate: StepGate
) -> None:
    await bots.start()
    # Held after its first step: the job is running for as long as the test needs.
    inter = await fake.invoke("spooky", {"prompt": "slow ghost"})
    job_id = (await job_of(engine_client, inter)).id
    held = await gate.held()
    assert held.job_id == job_id
    running = await fake.wait_for(
        lambda: (m := original(fake, inter)) and "step 1/" in m["content"] and m, RENDER_TIMEOUT_S
    )
    assert buttons(running) == [f"spooky:cancel:{job_id}"]

    # Someone else may not cancel it.
    stranger = await fake.click(running["id"], f"spooky:cancel:{job_id}", user=fake.other)
    refused = await fake.wait_for(lambda: ephemeral_replies(fake, stranger), 30)
    assert refused == ["Only the person who asked for this render or a moderator can cancel it."]
    assert (await engine_client.job(job_id)).state is JobState.RUNNING

    # Its owner may: the job stops, the message says so and loses its buttons.
    owner = await fake.click(running["id"], f"spooky:cancel:{job_id}", user=fake.member)
    done = await fake.wait_for(lambda: ephemeral_replies(fake, owner), 30)
    assert done == ["Cancelled the render of “slow ghost”."]
    stopped = await fake.wait_for(lambda: final_of(fake, inter), 30)
    assert "🛑 Cancelled." in stopped["content"] and buttons(stopped) == [] and filenames(stopped) == []
    cancelled = await engine_client.job(job_id)
    assert cancelled.state is JobState.CANCELLED and cancelled.progress is not None
    assert cancelled.progress.step == held.step  # it never took the step the gate held back
    assert gate.state.passed == held.passed

    # /cancel without an argument stops the member's latest job (held too, after its first step).
    second = await fake.invoke("spooky", {"prompt": "another slow ghost"})
    second_id = (await job_of(engine_client, second)).id
    assert (await gate.held()).job_id == second_id
    await fake.wait_for(lambda: (m := original(fake, second)) and "step 1/" in m["content"], RENDER_TIMEOUT_S)
    cancel = await fake.invoke("cancel", {})
    await asyncio.wait_for(cancel.acked.wait(), 3)
    reply = await fake.wait_for(lambda: ephemeral_replies(fake, cancel), 30)
    assert reply == ["Cancelled the render of “another slow ghost”."]
    assert (await engine_client.job(second_id)).state is JobState.CANCELLED

    # Nothing left to cancel.
    empty = await fake.invoke("cancel", {})
    assert await fake.wait_for(lambda: ephemeral_replies(fake, empty), 30) == [
        "You have no render waiting or running; nothing to cancel."
    ]


async def test_limits_for_moderators_only(bots: Bots, fake: FakeDiscord, engine_client: EngineClient) -> None:
    await bots.start()
    before = await engine_client.limits(fake.guild_id)
    definition = fake.commands["limits"]
    assert str(definition["default_member_permissions"]) == str(PERM_MANAGE_GUILD)
    # Servers only, said both ways Discord reads it (`contexts` now, `dm_permission` before).
    assert (definition.get("contexts"), definition.get("dm_permission")) == ([0], False)

    # A member who invokes it anyway (e.g. a server overrode the default permissions) is refused.
    member = await fake.invoke("limits set", {"cooldown": 999}, user=fake.member)
    await asyncio.wait_for(member.acked.wait(), 3)
    assert await fake.wait_for(lambda: ephemeral_replies(fake, member), 10) == [NOT_MODERATOR]
    shown = await fake.invoke("limits show", {}, user=fake.member)
    assert await fake.wait_for(lambda: ephemeral_replies(fake, shown), 10) == [NOT_MODERATOR]
    assert await engine_client.limits(fake.guild_id) == before

    # A moderator changes them; the engine stores and enforces them at once.
    changed = await fake.invoke(
        "limits set",
        {"cooldown": 5, "max_steps": 3, "ban_word": "Pumpkin", "allow_channel": fake.channel_ids[0]},
        user=fake.moderator,
        permissions=MOD,
    )
    (reply,) = await fake.wait_for(lambda: ephemeral_replies(fake, changed), 10)
    assert "Updated" in reply and "pumpkin" in reply
    after = await engine_client.limits(fake.guild_id)
    assert (after.cooldown_s, after.max_steps, after.banned_words) == (5, 3, ["pumpkin"])
    assert after.allowed_channels == [fake.channel_ids[0]]
    log = await engine_client.limits_log(fake.guild_id)
    assert log and log[-1].actor_id == fake.moderator.id

    show = await fake.invoke("limits show", {}, user=fake.moderator, permissions=MOD)
    (text,) = await fake.wait_for(lambda: ephemeral_replies(fake, show), 10)
    assert "up to 3" in text and "`pumpkin`" in text and f"<#{fake.channel_ids[0]}>" in text

    # Refusals come back as the engine wrote them, to the asker only; the public message is removed.
    banned = await fake.invoke("spooky", {"prompt": "a PUMPKIN head"})
    assert await fake.wait_for(lambda: ephemeral_replies(fake, banned), 30) == [
        'the prompt contains "pumpkin", which this server does not allow; rephrase it'
    ]
    assert original(fake, banned)["deleted"]
    too_many = await fake.invoke("spooky", {"prompt": "a ghost", "steps": 50})
    assert await fake.wait_for(lambda: ephemeral_replies(fake, too_many), 30) == [
        "50 steps is outside this server's range 1–3; pick a value in it"
    ]
    elsewhere = await fake.invoke("spooky", {"prompt": "a ghost"}, channel_id=fake.channel_ids[1])
    assert await fake.wait_for(lambda: ephemeral_replies(fake, elsewhere), 30) == [
        f"this channel is not open for rendering; use <#{fake.channel_ids[0]}>"
    ]
    assert not await engine_client.jobs(guild_id=fake.guild_id, limit=10)  # nothing was queued


async def test_result_after_token_expiry_goes_to_the_channel(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    offset = [0.0]  # how far the bot's clock is ahead: the token ages when the test says so
    bot = await bots.start(clock=lambda: time.time() + offset[0])
    # The bot's first edit is answered only after its token has aged past interaction_ttl_s, so
    # its next message (progress or the result, however fast the render) is past the token's life.
    held = fake.hold(WEBHOOK_EDIT, method="PATCH")
    inter = await fake.invoke("spooky", {"prompt": "a very old vampire"})
    job = await job_of(engine_client, inter)
    await asyncio.wait_for(held.reached.wait(), 30)
    offset[0] = bot.config.interaction_ttl_s + 1
    held.release()

    final = await fake.wait_for(lambda: final_of(fake, inter, job.id), RENDER_TIMEOUT_S)
    assert final["via"] == "channel" and filenames(final) == ["stylegan.png", "spooky.png"]
    assert sorted(buttons(final)) == [f"spooky:nightmare:{job.id}", f"spooky:reroll:{job.id}"]
    posts = [r for r in fake.requests if r.method == "POST" and r.path.startswith("/channels/")]
    assert len(posts) == 1, "the job's channel message was posted more than once"
    # The webhook was used once (the held edit) and never after the bot judged the token spent.
    assert [r.method for r in webhook_edits(fake, inter)] == ["PATCH"]
    assert not [r for r in fake.requests_for(inter.token) if r.status == 401]
    # The stale interaction message points to the new one (right after the new one is posted).
    await fake.wait_for(lambda: original(fake, inter)["content"] == CONTINUED, 10)
    async with asyncio.timeout(10):
        while not (await engine_client.job(job.id)).delivered:
            await asyncio.sleep(0.1)
    for body in fake.message_payloads():
        assert body.get("allowed_mentions") == {"parse": []}


async def test_nightmare_attachment_checks_and_refit(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    await bots.start()
    # Nothing to animate yet: a hint.
    bare = await fake.invoke("nightmare", {})
    assert await fake.wait_for(lambda: ephemeral_replies(fake, bare), 30) == [
        "you have no image in this channel to animate yet: "
        "run /spooky first, or attach an image to /nightmare"
    ]

    # Refused at the edge, before any download: not an image, too large.
    text = fake.add_attachment("notes.txt", "text/plain", b"hello")
    wrong = await fake.invoke("nightmare", {"image": text})
    assert await fake.wait_for(lambda: ephemeral_replies(fake, wrong), 30) == [
        "“notes.txt” is text/plain; attach a PNG, JPEG, WebP or GIF image instead."
    ]
    huge = fake.add_attachment("big.png", "image/png", b"x", size=9 * 1024 * 1024)
    big = await fake.invoke("nightmare", {"image": huge})
    assert await fake.wait_for(lambda: ephemeral_replies(fake, big), 30) == [
        "“big.png” is 9.0 MB; images up to 8 MB are accepted."
    ]
    # Claims to be a PNG but is not: the engine's check refuses it.
    fake_png = fake.add_attachment("evil.png", "image/png", b"\x89PNG\r\n\x1a\n not really")
    evil = await fake.invoke("nightmare", {"image": fake_png})
    (text,) = await fake.wait_for(lambda: ephemeral_replies(fake, evil), 30)
    assert "not an image" in text, text
    # Only that one was downloaded: the others were refused from what Discord said about them.
    assert fake.downloads == [fake_png["id"]]
    assert not [r for r in fake.requests if r.status == 413]

    # A real image whose video is over this server's (smaller than announced) upload limit.
    fake.upload_limit_bytes = 100 * 1024
    image = fake.add_attachment("face.png", "image/png", noise_png(128))
    inter = await fake.invoke("nightmare", {"image": image, "frames": 30})
    final = await fake.wait_for(lambda: final_of(fake, inter), RENDER_TIMEOUT_S)
    too_large = [r for r in fake.requests if r.status == 413]
    assert too_large and "nightmare.mp4" in uploaded(too_large[0]), (
        "the first video post was not over the limit"
    )
    assert filenames(final) == ["nightmare.mp4"], final["content"]
    data = fake.files[final["attachments"][0]["id"]]
    assert len(data) <= fake.upload_limit_bytes < too_large[0].upload_bytes
    codec, frames, size = probe_video(data)
    assert (codec, frames, size) == ("h264", 30, (128, 128))


async def test_restart_mid_job_still_delivers_and_buttons_work(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    first_bot = await bots.start()
    # The bot is stopped while its first edit waits for Discord's answer: it never sees the job end.
    held = fake.hold(WEBHOOK_EDIT, method="PATCH")
    inter = await fake.invoke("spooky", {"prompt": "restless spirit", "steps": 3})
    job_id = (await job_of(engine_client, inter)).id
    await asyncio.wait_for(held.reached.wait(), 30)
    await bots.stop(first_bot)
    held.release()

    # The job finishes while no bot is running.
    async with asyncio.timeout(RENDER_TIMEOUT_S):
        while not (await engine_client.job(job_id)).state.terminal:
            await asyncio.sleep(0.2)
    assert not (await engine_client.job(job_id)).delivered

    await bots.start()
    final = await fake.wait_for(lambda: final_of(fake, inter), 60)
    assert filenames(final) == ["stylegan.png", "spooky.png"]
    assert (await engine_client.job(job_id)).delivered

    # A button of a message sent before the restart is handled by the new process.
    reroll = await fake.click(final["id"], f"spooky:reroll:{job_id}")
    await asyncio.wait_for(reroll.acked.wait(), 3)
    again = await job_of(engine_client, reroll)
    assert again.id != job_id and again.request.prompt == "restless spirit"
    # No seed is sent: the engine draws the new one (the first test sees it differ in the result).
    assert again.request.steps == 3 and again.request.seed is None


async def test_result_survives_discord_outage(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    await bots.start()
    # The result post fails: twice the connection drops, once a 503; the bot keeps trying.
    fake.inject(r"^/webhooks/", method="PATCH", drop=True, times=2, filename="spooky.png")
    fake.inject(r"^/webhooks/", method="PATCH", status=503, times=1, filename="spooky.png")
    # The attempt that works is answered only when the test has looked at the engine.
    posted = fake.hold(r"^/webhooks/", method="PATCH", filename="spooky.png")
    inter = await fake.invoke("spooky", {"prompt": "a storm of bats"})
    job_id = (await job_of(engine_client, inter)).id
    await asyncio.wait_for(posted.reached.wait(), RENDER_TIMEOUT_S)
    attempts = [r for r in fake.requests if "spooky.png" in uploaded(r)]
    assert [r.status for r in attempts] == [-1, -1, 503, 200]
    # Not marked delivered while the post has not been answered.
    assert not (await engine_client.job(job_id)).delivered
    posted.release()
    final = await fake.wait_for(lambda: final_of(fake, inter), 60)
    assert filenames(final) == ["stylegan.png", "spooky.png"]
    async with asyncio.timeout(10):
        while not (await engine_client.job(job_id)).delivered:
            await asyncio.sleep(0.1)


async def test_engine_down_is_said_at_once(bots: Bots, fake: FakeDiscord) -> None:
    await bots.start(engine_url=f"http://127.0.0.1:{free_port()}")
    inter = await fake.invoke("spooky", {"prompt": "anyone home?"})
    await asyncio.wait_for(inter.acked.wait(), 3)
    assert await fake.wait_for(lambda: ephemeral_replies(fake, inter), 5) == [ENGINE_DOWN]
    assert original(fake, inter)["deleted"]
    queue = await fake.invoke("queue", {})
    assert await fake.wait_for(lambda: ephemeral_replies(fake, queue), 5) == [ENGINE_DOWN]
    # A blank prompt is refused at the edge (transformer), before any engine call.
    blank = await fake.invoke("spooky", {"prompt": "   "})
    await asyncio.wait_for(blank.acked.wait(), 3)
    assert blank.callback_type == 4  # answered directly, ephemeral
    assert await fake.wait_for(lambda: ephemeral_replies(fake, blank), 5) == [
        "The prompt is empty: describe a face, e.g. “dracula pale fangs”."
    ]


async def test_hundred_concurrent_commands_are_acknowledged_in_time(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    await bots.start()
    # Paused: every /spooky goes through defer → submit → refusal, without queueing renders.
    await engine_client.update_limits(fake.guild_id, fake.moderator.id, {"paused": True})
    inters = await asyncio.gather(*(fake.invoke("spooky", {"prompt": f"ghost {i}"}) for i in range(100)))
    await asyncio.wait_for(asyncio.gather(*(i.acked.wait() for i in inters)), 30)
    latencies = sorted(i.ack_latency or 0.0 for i in inters)
    print(f"ack latency of 100 concurrent commands: p50 {latencies[49]:.3f} s, max {latencies[-1]:.3f} s")
    # Discord's rule: the first response within 3 s.
    assert latencies[-1] < 3.0
    assert all(i.callback_type == 5 for i in inters)
    await fake.wait_for(lambda: all(ephemeral_replies(fake, i) for i in inters), 60)
    assert all(ephemeral_replies(fake, i) == [PAUSED] for i in inters)
    assert not await engine_client.jobs(guild_id=fake.guild_id, limit=10)  # none was queued


async def test_queue_shows_position(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient, gate: StepGate
) -> None:
    await bots.start()
    # One job held after its first step, one waiting behind it.
    first = await fake.invoke("spooky", {"prompt": "running ghoul"})
    running = (await job_of(engine_client, first)).id
    held = await gate.held()
    assert held.job_id == running
    second = await fake.invoke("spooky", {"prompt": "queued ghoul"})
    waiting = await job_of(engine_client, second)
    assert waiting.state is JobState.QUEUED and waiting.position == 1

    queue = await fake.invoke("queue", {})
    await asyncio.wait_for(queue.acked.wait(), 3)
    assert (queue.callback or {}).get("data", {}).get("flags", 0) & 64  # ephemeral
    (text,) = await fake.wait_for(lambda: ephemeral_replies(fake, queue), 30)
    lines = text.splitlines()
    progress = (await engine_client.job(running)).progress
    assert progress is not None and progress.step == held.step
    now = f"“running ghoul” — running: {STAGE_LABELS[progress.stage]} {progress.step}/{progress.total}"
    assert lines[:2] == ["**Render queue**: 1 job waiting", f"Now rendering for <@{fake.member.id}>: {now}"]
    assert "**Your renders:**" in lines, text
    mine = lines[lines.index("**Your renders:**") + 1 :]
    assert mine[0] == f"• `{running}` {now}", text
    assert mine[1].startswith(f"• `{waiting.id}` “queued ghoul” — position 1, done in about "), text
    assert len(mine) == 2, text


async def test_deleted_progress_message_gets_a_new_result_message(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    await bots.start()
    # Someone removes the progress message right after the bot's first edit of it.
    held = fake.hold(WEBHOOK_EDIT, method="PATCH")
    inter = await fake.invoke("spooky", {"prompt": "vanishing ghost"})
    job_id = (await job_of(engine_client, inter)).id
    await asyncio.wait_for(held.reached.wait(), 30)
    original(fake, inter)["deleted"] = True
    held.release()
    final = await fake.wait_for(lambda: final_of(fake, inter, job_id), RENDER_TIMEOUT_S)
    assert final["via"] == "channel" and filenames(final) == ["stylegan.png", "spooky.png"]
    async with asyncio.timeout(10):
        while not (await engine_client.job(job_id)).delivered:
            await asyncio.sleep(0.1)


async def test_unexpected_error_is_logged_with_context_and_user_told(
    bots: Bots, fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    await bots.start()
    # Discord rejects the bot's first follow-up: nothing the command expects.
    fake.inject(r"^/webhooks/\d+/[^/]+$", method="POST", status=400, code=50035, times=1)
    with caplog.at_level(logging.ERROR, logger="bot"):
        inter = await fake.invoke("queue", {})
        reply = await fake.wait_for(lambda: ephemeral_replies(fake, inter), 30)
    assert reply == [UNEXPECTED]
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR and r.name.startswith("bot")]
    text = record.getMessage()
    assert (
        "/queue" in text and fake.member.id in text and fake.guild_id in text and fake.channel_ids[0] in text
    )
    assert record.exc_info is not None


async def test_result_that_cannot_fit_says_why(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    await bots.start()
    fake.upload_limit_bytes = 1024  # smaller than any still: nothing can be attached
    inter = await fake.invoke("spooky", {"prompt": "a huge ghost"})
    final = await fake.wait_for(lambda: final_of(fake, inter), RENDER_TIMEOUT_S)
    assert filenames(final) == []
    (refused,) = [r for r in fake.requests if "spooky.png" in uploaded(r)]
    assert refused.status == 413
    # In real sizes: what was refused, and what the interaction announced.
    assert (
        f"The result ({size(refused.upload_bytes)}) is over this server's upload limit "
        "(below the 10.0 MB it announced) and could not be made small enough to post."
    ) in final["content"]
    async with asyncio.timeout(10):
        while not (await engine_client.job(job_id_of(final))).delivered:
            await asyncio.sleep(0.1)


async def test_video_that_cannot_fit_asks_for_less_and_says_the_real_sizes(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    await bots.start()
    fake.upload_limit_bytes = 2 * 1024  # no MP4 is this small: every size the bot asks for is refused
    image = fake.add_attachment("face.png", "image/png", noise_png(128))
    inter = await fake.invoke("nightmare", {"image": image, "frames": 30})
    final = await fake.wait_for(lambda: final_of(fake, inter), RENDER_TIMEOUT_S)
    assert filenames(final) == []
    refused = [r.upload_bytes for r in fake.requests if "nightmare.mp4" in uploaded(r)]
    assert refused and all(r.status == 413 for r in fake.requests if "nightmare.mp4" in uploaded(r))
    # Each upload after a 413 is a re-encode strictly smaller than the one refused before it.
    assert all(b < a for a, b in itertools.pairwise(refused)), refused
    # Said in real sizes: the last size refused, the limit announced (the engine's reason follows).
    assert (
        f"⚠️ The video ({size(refused[-1])}) is over this server's upload limit "
        "(below the 10.0 MB it announced) and could not be "
    ) in final["content"], final["content"]
    async with asyncio.timeout(10):
        while not (await job_of(engine_client, inter)).delivered:
            await asyncio.sleep(0.1)


async def test_token_refused_early_falls_back_to_the_channel(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    await bots.start()  # it believes its tokens live interaction_ttl_s
    # Discord refuses the token (50027) from the bot's second edit on, however fast the render.
    held = fake.hold(WEBHOOK_EDIT, method="PATCH")
    inter = await fake.invoke("spooky", {"prompt": "impatient ghost"})
    job_id = (await job_of(engine_client, inter)).id
    await asyncio.wait_for(held.reached.wait(), 30)
    fake.expire(inter)
    held.release()
    final = await fake.wait_for(lambda: final_of(fake, inter, job_id), RENDER_TIMEOUT_S)
    assert final["via"] == "channel" and filenames(final) == ["stylegan.png", "spooky.png"]
    refused = [r for r in fake.requests_for(inter.token) if r.status == 401]
    # Refused once; after that the bot no longer uses the dead token.
    assert len(refused) == 1


async def test_sweep_delivers_what_the_event_stream_never_announced(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bot's cursor is far ahead of the engine's events (an engine whose database was reset).
    monkeypatch.setattr(tracker_module, "SWEEP_INTERVAL_S", 0.5)
    bots.data_dir.mkdir(parents=True)
    (bots.data_dir / "engine-events.cursor").write_text("999999999\n")
    bot = await bots.start()
    inter = await fake.invoke("spooky", {"prompt": "an unannounced ghost"})
    final = await fake.wait_for(lambda: final_of(fake, inter), RENDER_TIMEOUT_S)
    assert filenames(final) == ["stylegan.png", "spooky.png"]
    await fake.wait_for(lambda: bot.tracker.delivered == [job_id_of(final)], 10)


async def test_progress_message_is_never_edited_to_what_it_already_says(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient, gate: StepGate
) -> None:
    bot = await bots.start(progress_interval_s=0.2)
    # The first job is held after its first step, so the others wait in the queue until the test
    # lets it go: each waiting one's first "in the queue" state arrives twice (the submit answer,
    # then its QUEUED event), identical.
    inters = [await fake.invoke("spooky", {"prompt": f"echoing ghost {i}"}) for i in range(4)]
    jobs = [(await job_of(engine_client, inter)).id for inter in inters]
    running = (await gate.held()).job_id  # the bot submits them concurrently: any may be first
    waiting = [j for j in jobs if j != running]
    assert len(waiting) == 3, (running, jobs)
    events = await _events_until(engine_client, fake.guild_id, {(j, EventType.QUEUED) for j in waiting})
    # Let the first job go only once the bot has read those events and each message's feed has
    # decided what to do with them: a decided no-op edit sends nothing Discord could show us.
    tracker, last = bot.tracker, max(e.id for e in events)
    await fake.wait_for(
        lambda: tracker._last_event >= last and not any(f._wake.is_set() for f in tracker._feeds.values()),
        30,
    )
    gate.release()
    for inter in inters:
        await fake.wait_for(lambda inter=inter: final_of(fake, inter), RENDER_TIMEOUT_S)
    for job_id, inter in zip(jobs, inters, strict=True):
        edits = [
            (r.json.get("content"), uploaded(r))
            for r in webhook_edits(fake, inter)
            if isinstance(r.json, dict)
        ]
        assert len(edits) >= 2, edits
        if job_id in waiting:
            assert any("⏳ In the queue: position" in text for text, _ in edits), edits
        repeats = [a for a, b in itertools.pairwise(edits) if a == b and not b[1]]
        assert not repeats, f"no-op edits: {repeats}"
        assert (await job_of(engine_client, inter)).delivered


async def _events_until(
    engine: EngineClient, guild_id: str, wanted: set[tuple[str, EventType]]
) -> list[Event]:
    """The guild's engine events from the first up to the last of `wanted` (job id, type)."""
    seen: list[Event] = []
    async with asyncio.timeout(30), contextlib.aclosing(engine.events(guild_id=guild_id)) as stream:
        async for event in stream:
            seen.append(event)
            wanted.discard((event.job_id, event.type))
            if not wanted:
                return seen
    raise AssertionError(f"the event stream ended before {wanted}")
