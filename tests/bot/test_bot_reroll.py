"""Reroll re-submits the source job's whole request: every option carried, whatever options exist."""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING

from bot_helpers import RENDER_TIMEOUT_S, buttons, filenames, job_of
from fake_discord.server import FakeDiscord
from PIL import Image

from bot.delivery_state import DeliveryState
from spooky.contract import ORIGIN_FIELDS, JobKind, JobRequest, JobState, Requester
from spooky.engine_client import EngineClient

if TYPE_CHECKING:
    from conftest import Bots

#: What a reroll replaces: a new seed for the engine to draw, and who asked through which
#: interaction. Every other field of JobRequest is the source's.
REPLACED = {"seed", *ORIGIN_FIELDS}

#: The fields a spooky job may not carry (the contract refuses them on one).
NOT_SPOOKY = set(JobRequest.model_fields) - JobRequest.fields_for(JobKind.SPOOKY) - {"kind", *ORIGIN_FIELDS}


def _source(fake: FakeDiscord, photo: str = "a-photo-id") -> JobRequest:
    """A spooky request with every field a spooky job may carry set to something not its default
    (`photo`: the id of the picture the scare pass starts from)."""
    return JobRequest(
        kind=JobKind.SPOOKY,
        prompt="a pale count with fangs",
        scare_prompt="rotting flesh:1|sunlight:-0.5",
        seed=1234,
        steps=2,
        scare_steps=1,
        size=(48, 32),
        init_artifact=photo,
        requester=Requester(
            user_id=fake.member.id,
            channel_id=fake.channel_ids[0],
            guild_id=fake.guild_id,
            user_name=fake.member.username,
        ),
        idempotency_key="reroll-source",
        # No interaction token: the bot posts the result as its own channel message.
        client=DeliveryState(
            app_id=fake.app_id, channel_id=fake.channel_ids[0], guild_id=fake.guild_id
        ).to_client(),
    )


def test_the_source_request_sets_every_field_a_spooky_job_may_carry(fake: FakeDiscord) -> None:
    source = _source(fake)
    at_default = {
        name
        for name, field in JobRequest.model_fields.items()
        if not field.is_required() and getattr(source, name) == field.get_default(call_default_factory=True)
    }
    # A new JobRequest field shows up here until the reroll test's source request sets it.
    assert at_default == NOT_SPOOKY


async def test_reroll_resubmits_every_field_of_the_source_request(
    bots: Bots, fake: FakeDiscord, engine_client: EngineClient
) -> None:
    await bots.start()
    png = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(png, "PNG")
    photo = await engine_client.upload(png.getvalue(), user_id=fake.member.id, channel_id=fake.channel_ids[0])
    source = (await engine_client.submit(_source(fake, photo.id))).job
    result = await fake.wait_for(
        lambda: next((m for m in fake.messages.values() if f"spooky:reroll:{source.id}" in buttons(m)), None),
        RENDER_TIMEOUT_S,
    )
    assert filenames(result) == ["spooky.png"]  # from the photo: no stage-1 face
    assert (await engine_client.job(source.id)).state is JobState.SUCCEEDED

    reroll = await fake.click(result["id"], f"spooky:reroll:{source.id}", user=fake.other)
    await asyncio.wait_for(reroll.acked.wait(), 3)
    again = (await job_of(engine_client, reroll)).request

    kept = set(JobRequest.model_fields) - REPLACED
    differ = {
        name: (getattr(source.request, name), getattr(again, name))
        for name in sorted(kept)
        if getattr(again, name) != getattr(source.request, name)
    }
    assert not differ, f"the reroll changed or dropped (source, reroll): {differ}"
    # What it replaced is this interaction's: no seed (the engine draws one), the presser, the
    # interaction id as idempotency key, and the interaction's token to edit its message with.
    assert again.seed is None
    assert again.requester.user_id == fake.other.id and again.requester.channel_id == fake.channel_ids[0]
    assert again.idempotency_key == reroll.id
    assert DeliveryState.from_client(again.client).token == reroll.token
