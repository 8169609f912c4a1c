"""The bot's Discord side: acknowledgement latency under a burst, and Discord API calls per job.

Three real processes and one fake: the engine (`spooky engine`, tiny preset) and the bot
(`spooky bot`) run as children; the Discord API is the local fake of the tests
(tests/bot/fake_discord/), in this process, which records every request with its time.

  ack      N concurrent slash commands sent at once on the gateway; latency = INTERACTION_CREATE
           written -> interaction callback received (Discord allows 3 s). Two bursts: /spooky on a
           paused server (each one reaches the engine and is refused) and /queue.
  per job  J /spooky jobs and one /nightmare, one after another: API calls per job by kind
           (callback, progress edits, uploads, channel messages), bytes uploaded, wall time.

    python benchmarks/bench_bot.py
    python benchmarks/bench_bot.py --burst 100 --jobs 3 --steps 60 --json bench_bot.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "bot"))

from bot_helpers import ephemeral_replies, final_of, webhook_edits  # noqa: E402
from fake_discord.server import FakeDiscord  # noqa: E402
from fake_discord.state import PERM_ALL_MEMBER, PERM_MANAGE_GUILD, Interaction  # noqa: E402

SECRET = "bench-secret"
CONFIG = """
[models]
preset = "tiny"
device = "cpu"
[pipeline]
stylegan_steps = {steps}
still_every = 5
scare_steps = 4
cutouts = 2
nightmare_frames = {frames}
[engine]
port = {port}
data_dir = "{data}"
drain_timeout_s = 2
[bot]
engine_url = "http://127.0.0.1:{port}"
api_base = "{api_base}"
gateway_url = "{gateway}"
data_dir = "{data}/bot"
[limits]
cooldown_s = 0
max_jobs_per_user = 100
max_queue_per_server = 1000
max_steps = 1000
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def start(name: str, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "spooky.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"engine exited:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/v1/health", timeout=2) as r:
                if json.loads(r.read())["status"] == "ready":
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("engine not ready in time")


async def burst(fake: FakeDiscord, command: str, options: dict[str, Any], n: int) -> list[float]:
    inters: list[Interaction] = list(await asyncio.gather(*(fake.invoke(command, options) for _ in range(n))))
    await asyncio.wait_for(asyncio.gather(*(i.acked.wait() for i in inters)), 60)
    # Let the follow-ups finish so the next burst starts from a quiet bot.
    await fake.wait_for(lambda: all(ephemeral_replies(fake, i) for i in inters), 120)
    return [i.ack_latency or 0.0 for i in inters]


async def one_job(fake: FakeDiscord, command: str, options: dict[str, Any]) -> dict[str, Any]:
    before = len(fake.requests)
    started = time.monotonic()
    inter = await fake.invoke(command, options)
    await fake.wait_for(lambda: final_of(fake, inter), 600)
    wall = time.monotonic() - started
    await asyncio.sleep(0.5)  # nothing else should follow; give a stray edit the chance to show
    mine = [r for r in fake.requests[before:] if r.path != "/users/@me"]
    edits = webhook_edits(fake, inter)
    return {
        "command": command,
        "wall_s": round(wall, 2),
        "api_calls": len(mine),
        "callbacks": sum("/callback" in r.path for r in mine),
        "edits": len(edits),
        "uploads": sum(bool(r.files) for r in mine),
        "upload_bytes": sum(r.upload_bytes for r in mine),
        "channel_messages": sum(r.path.startswith("/channels/") for r in mine),
        "min_edit_gap_s": round(min((b.at - a.at for a, b in itertools.pairwise(edits)), default=0), 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    fake = FakeDiscord()
    await fake.start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-bot-"))
    port = free_port()
    cfg = tmp / "config.toml"
    cfg.write_text(
        CONFIG.format(
            steps=args.steps,
            frames=args.frames,
            port=port,
            data=tmp / "data",
            api_base=fake.api_base,
            gateway=fake.gateway_url,
        ),
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_")}
    env |= {"SPOOKY_ENGINE_SECRET": SECRET, "DISCORD_TOKEN": fake.bot_token, "OMP_NUM_THREADS": "1"}
    engine = start("engine", ["engine", "--config", str(cfg)], env, tmp / "engine.log")
    bot: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}", engine, tmp / "engine.log")
        bot = start("bot", ["bot", "--config", str(cfg)], env, tmp / "bot.log")
        await fake.wait_for(lambda: fake.ready_sent and "spooky" in fake.commands, 120)
        await asyncio.sleep(0.5)
        out: dict[str, Any] = {"burst": args.burst, "steps": args.steps, "frames": args.frames}

        # Per job, first, on a quiet engine.
        jobs = [await one_job(fake, "spooky", {"prompt": f"pale vampire {i}"}) for i in range(args.jobs)]
        jobs.append(await one_job(fake, "nightmare", {}))
        out["jobs"] = jobs

        # Bursts: a paused server refuses every render, so the engine's queue stays empty.
        mod = PERM_ALL_MEMBER | PERM_MANAGE_GUILD
        pause = await fake.invoke("limits set", {"paused": True}, user=fake.moderator, permissions=mod)
        await fake.wait_for(lambda: len(fake.requests_for(pause.token)) >= 2, 30)
        for name, command, options in (
            ("spooky_paused", "spooky", {"prompt": "ghost"}),
            ("queue", "queue", {}),
        ):
            lat = await burst(fake, command, options, args.burst)
            out[f"ack_{name}"] = {
                "p50_ms": round(statistics.median(lat) * 1000, 1),
                "p99_ms": round(percentile(lat, 99) * 1000, 1),
                "max_ms": round(max(lat) * 1000, 1),
            }
        return out
    finally:
        for proc in (bot, engine):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, 60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=100, help="concurrent commands per burst (default 100)")
    parser.add_argument("--jobs", type=int, default=3, help="/spooky jobs for the per-job counts (default 3)")
    parser.add_argument("--steps", type=int, default=60, help="stage-1 steps of those jobs (default 60)")
    parser.add_argument("--frames", type=int, default=30, help="frames of the /nightmare (default 30)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    out = asyncio.run(run(args))
    print(f"acknowledgement latency, {args.burst} concurrent commands (Discord allows 3000 ms):")
    for key in ("ack_spooky_paused", "ack_queue"):
        v = out[key]
        name = key.removeprefix("ack_")
        print(
            f"  {name:<14} p50 {v['p50_ms']:7.1f} ms   p99 {v['p99_ms']:7.1f} ms   max {v['max_ms']:7.1f} ms"
        )
    print("Discord API calls per job:")
    print("  command    wall_s  calls  callbacks  edits  uploads  upload_KB  channel  min_edit_gap_s")
    for j in out["jobs"]:
        print(
            f"  {j['command']:<10} {j['wall_s']:6.1f} {j['api_calls']:6d} {j['callbacks']:10d}"
            f" {j['edits']:6d}"
            f" {j['uploads']:8d} {j['upload_bytes'] / 1024:10.1f} {j['channel_messages']:8d}"
            f" {j['min_edit_gap_s']:15.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
