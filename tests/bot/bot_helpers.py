"""Reading what the bot did from the fake Discord's records."""

from __future__ import annotations

import asyncio
import io
import random
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import imageio_ffmpeg
from fake_discord.server import FakeDiscord
from fake_discord.state import EPHEMERAL, Interaction, Recorded
from PIL import Image

from spooky.contract import JobView
from spooky.engine_client import EngineClient

RENDER_TIMEOUT_S = 180.0  # the engine shares two cores with the test and other work

#: The bot's edits of an interaction's messages (held in tests that act between two of them).
WEBHOOK_EDIT = r"^/webhooks/\d+/[^/]+/messages/"


def noise_png(side: int, height: int | None = None) -> bytes:
    """A PNG of random pixels (`side` wide, `height` or `side` high): a photo nothing compresses."""
    h = height or side
    rnd = random.Random(side * 7919 + h)
    image = Image.frombytes("RGB", (side, h), rnd.randbytes(side * h * 3))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def buttons(message: dict[str, Any]) -> list[str]:
    return [
        c.get("custom_id", "") for row in message.get("components", []) for c in row.get("components", [])
    ]


def job_id_of(message: dict[str, Any]) -> str:
    ids = [b.rsplit(":", 1)[1] for b in buttons(message) if b.startswith("spooky:")]
    assert ids, f"no job button on {message['content']!r}"
    return ids[0]


def filenames(message: dict[str, Any]) -> list[str]:
    return [a["filename"] for a in message.get("attachments", [])]


def uploaded(rec: Recorded) -> list[str]:
    return [name for name, _ in rec.files]


def is_final(message: dict[str, Any] | None) -> bool:
    if message is None or message.get("deleted"):
        return False
    names = filenames(message)
    return (
        "spooky.png" in names
        or "nightmare.mp4" in names
        or "✅" in message["content"]
        or "🛑" in message["content"]
        or "❌" in message["content"]
    )


def original(fake: FakeDiscord, inter: Interaction) -> dict[str, Any] | None:
    return fake.messages.get(inter.original_id or "")


def final_of(fake: FakeDiscord, inter: Interaction, job_id: str | None = None) -> dict[str, Any] | None:
    """The job's final message: the interaction's original, or the channel message that took over
    (found by the job id on its buttons)."""
    first = original(fake, inter)
    if is_final(first):
        return first
    if job_id is None and first is not None and buttons(first):
        job_id = job_id_of(first)
    if job_id is None:
        return None
    for message in fake.messages.values():
        if message["via"] != "channel" or message.get("deleted") or not is_final(message):
            continue
        if any(b.endswith(":" + job_id) for b in buttons(message)):
            return message
    return None


def ephemeral_messages(fake: FakeDiscord, inter: Interaction) -> list[dict[str, Any]]:
    """Messages only the user saw (ephemeral messages of this interaction), with content."""
    return [
        m
        for m in fake.messages.values()
        if m.get("interaction_id") == inter.id
        and m["flags"] & EPHEMERAL
        and not m.get("deleted")
        and m["content"]
    ]


def ephemeral_replies(fake: FakeDiscord, inter: Interaction) -> list[str]:
    """Texts only the user saw (ephemeral messages of this interaction)."""
    return [m["content"] for m in ephemeral_messages(fake, inter)]


def webhook_edits(fake: FakeDiscord, inter: Interaction) -> list[Recorded]:
    return [
        r for r in fake.requests_for(inter.token) if r.method == "PATCH" and r.path.startswith("/webhooks/")
    ]


def probe_video(data: bytes) -> tuple[str, int, tuple[int, int]]:
    """(codec, decoded frame count, (w, h)) of an MP4, by decoding it with the bundled ffmpeg."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.mp4"
        path.write_bytes(data)
        run = subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                "-hide_banner",
                "-i",
                str(path),
                "-map",
                "0:v:0",
                "-f",
                "null",
                "-",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    log = run.stderr
    codec = re.search(r"Video: (\w+)", log)
    size = re.search(r"Video: .*?, (\d+)x(\d+)", log)
    frames = re.findall(r"frame=\s*(\d+)", log)
    assert codec and size and frames, log
    return codec[1], int(frames[-1]), (int(size[1]), int(size[2]))


async def job_of(engine: EngineClient, inter: Interaction) -> JobView:
    """The engine job this interaction submitted (its id is the idempotency key), read from the
    engine rather than from a message the bot may already have rewritten."""
    user = (inter.payload.get("member") or inter.payload)["user"]["id"]
    async with asyncio.timeout(30):
        while True:
            for job in await engine.jobs(user_id=user, limit=1000):
                if job.request.idempotency_key == inter.id:
                    return job
            await asyncio.sleep(0.05)


async def delivered(engine: EngineClient, job_id: str, timeout: float = 30.0) -> None:
    """Wait until the engine has the job marked delivered."""
    async with asyncio.timeout(timeout):
        while not (await engine.job(job_id)).delivered:
            await asyncio.sleep(0.1)
