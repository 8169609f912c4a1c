"""A member's picture as the start (issue 19, the engine side): the scare pass runs on the photo,
moderators can switch pictures off, recent prompts for autocomplete, and the limits of a context
without a server install."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image
from service_helpers import make_settings, request, running_engine

from spooky.contract import EventType, JobKind, JobState, RefusalCode
from spooky.engine_client import EngineRefused
from spooky.styles import STYLES

pytestmark = pytest.mark.slow


def photo_png(w: int = 80, h: int = 48) -> bytes:
    rnd = random.Random(w * h)
    buf = io.BytesIO()
    Image.frombytes("RGB", (w, h), rnd.randbytes(w * h * 3)).save(buf, "PNG")
    return buf.getvalue()


async def test_a_photo_is_scared_without_stage_one_and_can_then_be_animated(tmp_path: Path, tiny_models):
    async with running_engine(make_settings(tmp_path), tiny_models) as (_, client):
        photo = await client.upload(photo_png(), user_id="1", channel_id="200")
        job = (await client.submit(request(user="1", init_artifact=photo.id, scare_steps=2))).job
        events = [e async for e in client.events(job_id=job.id)]
        assert events[-1].type is EventType.FINISHED, events[-1]
        stages = {e.data["stage"] for e in events if e.type is EventType.PROGRESS}
        assert stages == {"scare"}  # no StyleGAN2 step ran
        view = await client.job(job.id)
        assert view.state is JobState.SUCCEEDED
        assert set(view.artifacts) >= {"spooky", "source"} and "stylegan" not in view.artifacts
        assert view.artifacts["source"] == photo.id
        settings = view.result["settings"]
        assert (settings["start"], settings["steps"]) == ("image", 0)
        scared = Image.open(io.BytesIO(await client.artifact(view.artifacts["spooky"])))
        assert scared.size == (64, 64)  # the tiny preset's canvas, the photo cropped to it
        # It is the member's last image there: /nightmare without an attachment animates it.
        night = (await client.submit(request("nightmare", "nightmare", user="1", frames=2))).job
        night_events = [e async for e in client.events(job_id=night.id)]
        assert night_events[-1].type is EventType.FINISHED
        assert (await client.job(night.id)).artifacts["source"] == view.artifacts["spooky"]


async def test_moderators_can_switch_members_pictures_off(tmp_path: Path):
    async with running_engine(make_settings(tmp_path), autoload=False) as (svc, client):
        await client.update_limits("100", "9", {"allow_images": False})
        photo = await client.upload(photo_png(), user_id="1", channel_id="200")
        for kind, prompt in ((JobKind.SPOOKY, "ghost"), (JobKind.NIGHTMARE, "nightmare")):
            with pytest.raises(EngineRefused) as e:
                await client.submit(request(kind.value, prompt, user="1", init_artifact=photo.id))
            assert e.value.status == 409 and e.value.refusal.code is RefusalCode.IMAGES_OFF
            assert "allow_images" in e.value.refusal.message
        assert svc.store.queue_length() == 0  # nothing was queued
        # A render's own still is no member's picture: the Nightmare button still works.
        still = svc.files.write(photo_png(64, 64), "image/png", job_id="someJobId0000001")
        svc.store.add_artifact(still)
        night = await client.submit(request("nightmare", "nightmare", user="1", init_artifact=still.id))
        assert night.job.state is JobState.QUEUED
        # Another server, and a context without a server install, keep the default (on).
        other = await client.submit(request(user="2", guild="101", init_artifact=photo.id))
        assert other.job.state is JobState.QUEUED
        assert (await client.limits("100")).allow_images is False


async def test_recent_prompts_are_the_members_own_there_newest_first(tmp_path: Path):
    settings = make_settings(tmp_path, limits={"max_jobs_per_user": 20, "max_queue_per_server": 50})
    async with running_engine(settings, autoload=False) as (_, client):
        for user, guild, prompt in [
            ("1", "100", "pale ghost"),
            ("1", "100", "green witch"),
            ("1", "100", "pale ghost"),  # again: listed once, as the newest
            ("1", "101", "other server"),
            ("2", "100", "someone else"),
            ("1", None, "in a dm"),
        ]:
            await client.submit(request(user=user, guild=guild, prompt=prompt))
        assert await client.recent_prompts("1", "100") == ["pale ghost", "green witch"]
        assert await client.recent_prompts("1", "100", query="WITCH") == ["green witch"]
        assert await client.recent_prompts("1", "100", limit=1) == ["pale ghost"]
        assert await client.recent_prompts("1") == ["in a dm"]
        assert await client.recent_prompts("3", "100") == []


async def test_without_a_server_install_the_limits_are_the_defaults_per_user(tmp_path: Path):
    settings = make_settings(tmp_path, limits={"max_queue_per_server": 1, "max_jobs_per_user": 5})
    async with running_engine(settings, autoload=False) as (_, client):
        # Two members, each in their own DM (guild None): each has a "server" queue of their own.
        assert (await client.submit(request(user="1", guild=None))).job.state is JobState.QUEUED
        assert (await client.submit(request(user="2", guild=None))).job.state is JobState.QUEUED
        with pytest.raises(EngineRefused) as e:
            await client.submit(request(user="1", guild=None))
        assert e.value.refusal.code is RefusalCode.SERVER_QUEUE_FULL


def test_the_articles_four_monsters():
    assert list(STYLES) == ["witch", "vampire", "frankenstein", "werewolf"]
    assert STYLES["vampire"].prompt == "dracula muscular old male face pale skin fangs slicked back hair"
    assert all(s.prompt and s.scare_prompt and len(s.prompt) <= 100 for s in STYLES.values())


async def test_without_a_server_install_the_limits_are_the_operators_defaults(tmp_path: Path):
    settings = make_settings(tmp_path, limits={"default_prompt": "a ghoul", "allow_images": False})
    async with running_engine(settings, autoload=False) as (_, client):
        defaults = await client.limits(None)
        assert (defaults.default_prompt, defaults.allow_images) == ("a ghoul", False)
        await client.update_limits("100", "9", {"default_prompt": "a vampire"})
        assert (await client.limits(None)).default_prompt == "a ghoul"  # no moderator reaches these
