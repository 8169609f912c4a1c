"""A member's picture as the start (issue 19): /spooky image:, the Spookify and Nightmare message
menus, styles and prompt suggestions, and what each kind of bad picture gets; the real discord.py
client against the fake Discord, the real engine on the tiny preset."""

from __future__ import annotations

import asyncio
import io
import time
from typing import TYPE_CHECKING

import pytest
from bot_helpers import (
    RENDER_TIMEOUT_S,
    buttons,
    ephemeral_replies,
    filenames,
    final_of,
    job_id_of,
    job_of,
    noise_png,
    probe_video,
)
from fake_discord.server import FakeDiscord
from PIL import Image
from support import free_port

from bot.cogs.menus import PICTURES_OFF
from bot.pictures import NO_PICTURE
from spooky.contract import GuildLimits, JobKind, JobRequest, Requester
from spooky.engine_client import EngineClient
from spooky.styles import STYLES

if TYPE_CHECKING:
    from conftest import Bots
    from testgate import StepGate

#: Every command but /limits: offered to both installation types, in every interaction context.
EVERYWHERE = ([0, 1], [0, 1, 2])


def _jpeg(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 40, 40)).save(buf, "JPEG")
    return buf.getvalue()


def _text_inputs(modal: dict) -> list[dict]:
    return [top["component"] if top["type"] == 18 else top["components"][0] for top in modal["components"]]


async def test_the_command_tree_offers_both_installs_everywhere_and_two_message_menus(
    bots: Bots, fake: FakeDiscord
) -> None:
    await bots.start()
    assert sorted(fake.commands) == ["cancel", "limits", "nightmare", "queue", "spooky"]
    for name, definition in fake.commands.items():
        offered = (definition["integration_types"], definition["contexts"])
        assert offered == (([0], [0]) if name == "limits" else EVERYWHERE), name
    # Declared by the bot, not left to the app's Installation settings (Discord's default).
    (sync,) = [r for r in fake.requests if r.method == "PUT" and r.path.endswith("/commands")]
    assert isinstance(sync.json, list)
    assert all(c.get("integration_types") and c.get("contexts") for c in sync.json), sync.json
    assert sorted(fake.menus) == ["Nightmare", "Spookify"]
    for menu in fake.menus.values():
        assert (menu["type"], menu["description"]) == (3, "")  # message commands
        assert (menu["integration_types"], menu["contexts"]) == EVERYWHERE

    # So Discord offers /limits only where a server installed the app, the rest anywhere the
    # member installed it for themselves.
    fake.user_installs.add(fake.member.id)
    elsewhere = fake.foreign_server()
    with pytest.raises(AssertionError, match="no installation"):
        await fake.invoke("limits show", {}, channel_id=elsewhere)
    with pytest.raises(AssertionError, match="context 1"):
        await fake.invoke("limits show", {}, channel_id=fake.bot_dm(fake.member))
    queue = await fake.invoke("queue", {}, channel_id=elsewhere)
    (text,) = await fake.wait_for(lambda: ephemeral_replies(fake, queue), 10)
    assert text.startswith("**Render queue**"), text
    assert queue.payload["authorizing_integration_owners"] == {"1": fake.member.id}
    assert not [r for r in fake.requests if r.path.startswith("/channels/")]


async def test_a_photo_in_a_server_is_scared_then_animated_rerolled_and_nightmared(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    await bots.start()
    photo = fake.add_attachment("me.png", "image/png", noise_png(96, 64))
    inter = await fake.invoke("spooky", {"prompt": "a pale count", "image": photo, "style": "vampire"})
    await asyncio.wait_for(inter.acked.wait(), 3)
    final = await fake.wait_for(lambda: final_of(fake, inter), RENDER_TIMEOUT_S)

    # Only the scared still: no StyleGAN face was made.
    assert filenames(final) == ["spooky.png"], final["content"]
    assert "Your picture after the scare pass." in final["content"]
    job = await engine_client.job(job_id_of(final))
    assert job.request.init_artifact is not None
    assert (job.artifacts["source"], job.result["settings"]["start"]) == (job.request.init_artifact, "image")
    assert "stylegan" not in job.artifacts
    # The style's scare prompt drives the scare pass; the prompt is the member's.
    assert (job.request.prompt, job.request.scare_prompt) == ("a pale count", STYLES["vampire"].scare_prompt)
    assert job.request.requester.guild_id == fake.guild_id
    assert fake.downloads == [photo["id"]]
    assert sorted(buttons(final)) == [f"spooky:nightmare:{job.id}", f"spooky:reroll:{job.id}"]

    # Nightmare animates the scared photo.
    night = await fake.click(final["id"], f"spooky:nightmare:{job.id}")
    video = await fake.wait_for(lambda: final_of(fake, night), RENDER_TIMEOUT_S)
    assert filenames(video) == ["nightmare.mp4"]
    assert probe_video(fake.files[video["attachments"][0]["id"]])[:2] == ("h264", 6)
    assert (await job_of(engine_client, night)).artifacts["source"] == job.artifacts["spooky"]

    # Reroll scares the same photo again, with a new seed.
    reroll = await fake.click(final["id"], f"spooky:reroll:{job.id}")
    again_msg = await fake.wait_for(lambda: final_of(fake, reroll), RENDER_TIMEOUT_S)
    again = await engine_client.job(job_id_of(again_msg))
    assert filenames(again_msg) == ["spooky.png"] and again.request.init_artifact == job.request.init_artifact

    # /nightmare without an attachment animates the member's last image here: that scared photo.
    bare = await fake.invoke("nightmare", {})
    bare_video = await fake.wait_for(lambda: final_of(fake, bare), RENDER_TIMEOUT_S)
    assert filenames(bare_video) == ["nightmare.mp4"]
    assert (await job_of(engine_client, bare)).artifacts["source"] == again.artifacts["spooky"]


async def test_spookify_and_nightmare_menus_in_the_bots_dm(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    await bots.start()
    dm = fake.bot_dm(fake.member)
    posted = fake.post_message(
        dm, content="my cat", attachments=[fake.add_attachment("cat.jpg", "image/jpeg", _jpeg(80))]
    )

    # Spookify opens a form, prefilled with the default prompt (no server here), within 3 s.
    opened = await fake.use_on_message("Spookify", posted["id"])
    await asyncio.wait_for(opened.acked.wait(), 3)
    assert opened.callback_type == 9 and opened.modal is not None
    (text_input,) = _text_inputs(opened.modal)
    assert text_input["value"] == GuildLimits().default_prompt
    submitted = await fake.submit_form(opened, {text_input["custom_id"]: "  a green   witch "})
    await asyncio.wait_for(submitted.acked.wait(), 3)
    assert submitted.callback_type == 5  # public: it becomes the render's message
    final = await fake.wait_for(lambda: final_of(fake, submitted), RENDER_TIMEOUT_S)
    assert filenames(final) == ["spooky.png"] and final["channel_id"] == dm
    job = await engine_client.job(job_id_of(final))
    assert job.kind is JobKind.SPOOKY and job.request.prompt == "a green witch"
    assert job.request.init_artifact is not None
    assert job.request.requester.guild_id is None  # no server install: the engine's defaults
    assert job.request.idempotency_key == submitted.id

    # Nightmare on a message with an image link animates the linked picture, fetched from
    # Discord's media proxy, not from the link's own site.
    embed = fake.embed_image("face.png", "image/png", noise_png(64))
    linked = fake.post_message(dm, content=embed["url"], embeds=[embed])
    night = await fake.use_on_message("Nightmare", linked["id"])
    video = await fake.wait_for(lambda: final_of(fake, night), RENDER_TIMEOUT_S)
    assert filenames(video) == ["nightmare.mp4"] and video["channel_id"] == dm
    proxied = embed["thumbnail"]["proxy_url"].split("/")[-2]
    assert proxied in fake.downloads and not [d for d in fake.downloads if d.startswith("elsewhere:")]

    # All of it through the interactions: the bot never used a channel endpoint.
    assert not [r for r in fake.requests if r.path.startswith("/channels/")]


async def test_bad_pictures_are_refused_with_the_reason(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    await bots.start()
    channel = fake.channel_ids[0]

    # Refused at the edge from what Discord says of the attachment, before any download.
    text = fake.add_attachment("notes.txt", "text/plain", b"hello")
    wrong = await fake.invoke("spooky", {"prompt": "a ghost", "image": text})
    assert await fake.wait_for(lambda: ephemeral_replies(fake, wrong), 30) == [
        "“notes.txt” is text/plain; attach a PNG, JPEG, WebP or GIF image instead."
    ]
    assert wrong.callback_type == 4  # answered at once, for the member only
    huge = fake.add_attachment("big.png", "image/png", b"x", size=9 * 1024 * 1024)
    big = await fake.invoke("spooky", {"prompt": "a ghost", "image": huge})
    assert await fake.wait_for(lambda: ephemeral_replies(fake, big), 30) == [
        "“big.png” is 9.0 MB; images up to 8 MB are accepted."
    ]
    assert fake.downloads == []

    # A message without a picture (text, or a file that is no image): either menu says so.
    no_picture = fake.post_message(
        channel, content="just words", attachments=[fake.add_attachment("a.txt", "text/plain", b"x")]
    )
    for menu in ("Spookify", "Nightmare"):
        used = await fake.use_on_message(menu, no_picture["id"])
        assert await fake.wait_for(lambda used=used: ephemeral_replies(fake, used), 30) == [NO_PICTURE]
        assert used.callback_type == 4 and used.modal is None

    # A linked picture that is not one, or too large (sent without a length: cut off while read),
    # or that Discord did not proxy (the bot never fetches a link's own site).
    page = fake.embed_image("page.png", "text/html", b"<html></html>")
    html = await fake.use_on_message("Nightmare", fake.post_message(channel, embeds=[page])["id"])
    assert await fake.wait_for(lambda: ephemeral_replies(fake, html), 30) == [
        "“page.png” is text/html; attach a PNG, JPEG, WebP or GIF image instead."
    ]
    endless = fake.embed_image("endless.png", "image/png", b"\x89PNG" + b"\0" * (9 * 2**20), sized=False)
    long = await fake.use_on_message("Nightmare", fake.post_message(channel, embeds=[endless])["id"])
    assert await fake.wait_for(lambda: ephemeral_replies(fake, long), 30) == [
        "“endless.png” is too large: images up to 8 MB are accepted."
    ]
    odd = fake.embed_image("odd.png", "image/png", b"", kind="rich")
    odd["image"] |= {"proxy_url": None, "url": "http://10.0.0.1/odd.png"}
    ftp = await fake.use_on_message("Nightmare", fake.post_message(channel, embeds=[odd])["id"])
    assert await fake.wait_for(lambda: ephemeral_replies(fake, ftp), 30) == [
        "Discord did not proxy that picture's link, so I will not fetch it; attach the image instead."
    ]

    # Pictures switched off for the server: the engine refuses /spooky image:, and Spookify says
    # so before its form opens. Nothing is queued.
    await engine_client.update_limits(fake.guild_id, fake.moderator.id, {"allow_images": False})
    photo = fake.add_attachment("me.png", "image/png", noise_png(32))
    off = await fake.invoke("spooky", {"prompt": "a ghost", "image": photo})
    (refused,) = await fake.wait_for(lambda: ephemeral_replies(fake, off), 30)
    assert "does not take members' pictures" in refused and "allow_images:true" in refused, refused
    with_photo = fake.post_message(
        channel, attachments=[fake.add_attachment("p.png", "image/png", noise_png(32))]
    )
    spookify = await fake.use_on_message("Spookify", with_photo["id"])
    assert await fake.wait_for(lambda: ephemeral_replies(fake, spookify), 30) == [PICTURES_OFF]
    assert spookify.modal is None
    assert not await engine_client.jobs(user_id=fake.member.id, limit=10)


async def test_prompt_suggestions_are_the_styles_and_the_members_own_prompts_there(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient, gate: StepGate
) -> None:
    await bots.start()
    channel = fake.channel_ids[0]

    def asked(prompt: str, guild: str | None, user: str = fake.member.id) -> JobRequest:
        who = Requester(user_id=user, channel_id=channel, guild_id=guild)
        return JobRequest(kind=JobKind.SPOOKY, prompt=prompt, requester=who, steps=1, scare_steps=0)

    # The member's prompts here (held by the gate: nothing renders), one too long to offer whole,
    # one without a server install, and another member's.
    for i in range(30):
        await engine_client.submit(asked(f"pale ghost number {i}", fake.guild_id))
    await engine_client.submit(asked("green WITCH with a hat", fake.guild_id))
    await engine_client.submit(asked("a very long prompt " + "x" * 100, fake.guild_id))
    await engine_client.submit(asked("a ghost from my DMs", None))
    await engine_client.submit(asked("bob's own ghost", fake.guild_id, fake.other.id))

    witch = await fake.autocomplete("spooky", {"prompt": "witch"}, "prompt")
    await asyncio.wait_for(witch.acked.wait(), 3)
    assert witch.callback_type == 8
    assert [(c["name"], c["value"]) for c in witch.choices or []] == [
        (f"Witch: {STYLES['witch'].prompt}", STYLES["witch"].prompt),
        ("green WITCH with a hat", "green WITCH with a hat"),
    ]
    everything = await fake.autocomplete("spooky", {"prompt": ""}, "prompt")
    await asyncio.wait_for(everything.acked.wait(), 3)
    values = [c["value"] for c in everything.choices or []]
    assert len(values) == 25 and values[:4] == [s.prompt for s in STYLES.values()]
    assert values[4] == "green WITCH with a hat"  # the newest of the member's, first
    assert not [v for v in values if "long prompt" in v or "bob" in v or "DMs" in v]

    # In the bot's DMs (no server): the member's prompts from contexts without a server install.
    dm = await fake.autocomplete("spooky", {"prompt": "ghost"}, "prompt", channel_id=fake.bot_dm(fake.member))
    await asyncio.wait_for(dm.acked.wait(), 3)
    assert [c["value"] for c in dm.choices or []] == ["a ghost from my DMs"]


async def test_prompt_suggestions_without_the_engine_are_the_styles_in_time(
    bots: Bots, fake: FakeDiscord
) -> None:
    await bots.start(engine_url=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    inter = await fake.autocomplete("spooky", {"prompt": "were"}, "prompt")
    await asyncio.wait_for(inter.acked.wait(), 3)
    assert time.monotonic() - started < 3
    assert [c["value"] for c in inter.choices or []] == [STYLES["werewolf"].prompt]
