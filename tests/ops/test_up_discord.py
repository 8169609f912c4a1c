"""The whole product through `spooky up`: engine and bot as children, a /spooky answered in Discord.

Discord is the project's local Discord-compatible fake (tests/bot/fake_discord/), the only fake:
the engine (tiny preset), the bot and the supervisor are the real processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from bot_helpers import RENDER_TIMEOUT_S, filenames, final_of
from fake_discord.server import FakeDiscord
from support import free_port

from spooky.ops import SECRET_FILE

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
[models]
preset = "tiny"
device = "cpu"
[pipeline]
stylegan_steps = 4
still_every = 2
scare_steps = 2
cutouts = 2
[engine]
port = {port}
data_dir = "{data}"
drain_timeout_s = 5
[bot]
engine_url = "http://127.0.0.1:{port}"
api_base = "{api_base}"
gateway_url = "{gateway}"
data_dir = "{data}/bot"
progress_interval_s = 0.2
[limits]
cooldown_s = 0
"""



@pytest.mark.slow
async def test_up_serves_a_spooky_in_discord_and_stops_both_cleanly(tmp_path: Path):
    fake = FakeDiscord()
    await fake.start()
    port, log = free_port(), tmp_path / "up.log"
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        CONFIG.format(port=port, data=tmp_path / "data", api_base=fake.api_base, gateway=fake.gateway_url),
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_") and k != "DISCORD_TOKEN"}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", DISCORD_TOKEN=fake.bot_token)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spooky.cli", "up", "--config", str(cfg)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # The bot published its commands and joined the gateway, with the secret up generated.
        connected = lambda: "spooky" in fake.commands and fake.ready_sent  # noqa: E731
        await fake.wait_for(lambda: connected() or proc.poll() is not None, RENDER_TIMEOUT_S)
        assert proc.poll() is None, log.read_text()
        inter = await fake.invoke("spooky", {"prompt": "dracula pale fangs", "seed": 7})
        final = await fake.wait_for(lambda: final_of(fake, inter), RENDER_TIMEOUT_S)
        assert filenames(final) == ["stylegan.png", "spooky.png"], final["content"]
        assert "seed **7**" in final["content"]

        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await fake.stop()
    text = log.read_text()
    assert rc == 0, text
    assert "starting bot" in text and "bot stopped" in text and "engine stopped" in text
    secret = (tmp_path / "data" / SECRET_FILE).read_text().strip()
    assert secret not in text and fake.bot_token not in text
