"""The bot's small parts on their own: text safety, progress rendering, throttle, cursor, refit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.delivery_state import DeliveryState
from bot.feed import refit_target
from bot.progress import EditThrottle, JobSnapshot, bar, render_progress
from bot.text import duration, escape, size
from bot.tracker import CursorFile, Shards
from spooky.config import load_settings
from spooky.contract import Event, EventType, JobKind, JobState
from spooky.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def test_escape_defuses_every_mention_and_markdown() -> None:
    text = escape("@everyone @here <@&123> <@!12345678901234567> **bold** _x_ `code` ||spoiler||")
    assert "@everyone" not in text and "@here" not in text
    assert "<@&123>" not in text and "<@!12345678901234567>" not in text
    assert "\\*\\*bold\\*\\*" in text and "\\_x\\_" in text and "\\`code\\`" in text and "\\|\\|" in text


def test_escape_flattens_and_shortens() -> None:
    assert escape("a\n\n  b\tc") == "a b c"
    long = escape("x" * 500, limit=50)
    assert len(long) == 50 and long.endswith("…")


def test_duration_is_readable() -> None:
    assert (duration(None), duration(4.4), duration(125), duration(3900)) == (
        "unknown",
        "4 s",
        "2 min",
        "1 h 5 min",
    )


def test_bar_is_clamped() -> None:
    assert bar(0, 0, width=4) == "`░░░░` 0%"
    assert bar(1, 2, width=4) == "`██░░` 50%"
    assert bar(9, 2, width=4) == "`████` 100%"


def _event(n: int, kind: EventType, **data: object) -> Event:
    return Event(id=n, job_id="job1", type=kind, data=dict(data))


def test_snapshot_folds_events_into_the_message() -> None:
    snap = JobSnapshot("job1", JobKind.SPOOKY, "a **ghost**", "42")
    snap.apply(_event(1, EventType.QUEUED, position=3, eta_s=90))
    text = render_progress(snap)
    assert "position **3**" in text and "2 min" in text and "\\*\\*ghost\\*\\*" in text
    snap.apply(_event(2, EventType.STARTED, attempt=1))
    snap.apply(_event(3, EventType.PROGRESS, stage="scare", step=2, total=8, still="art12345"))
    text = render_progress(snap)
    assert "Making it scary: step 2/8" in text and "25%" in text
    assert snap.still == "art12345"
    snap.apply(_event(4, EventType.PROGRESS, stage="scare", step=3, total=8, still=None))
    assert snap.still == "art12345"  # a step without a still keeps the last one
    snap.apply(_event(5, EventType.INTERRUPTED, reason="engine restarted", retried=True))
    assert snap.state is JobState.QUEUED and "restarted" in render_progress(snap)
    snap.apply(_event(6, EventType.FAILED, reason="out of memory"))
    assert snap.state is JobState.FAILED and snap.error == "out of memory"


def test_throttle_spaces_edits() -> None:
    now = [100.0]
    throttle = EditThrottle(1.5, clock=lambda: now[0])
    assert throttle.wait_s() == 0
    throttle.mark()
    now[0] += 0.5
    assert throttle.wait_s() == pytest.approx(1.0)
    now[0] += 2
    assert throttle.wait_s() == 0


def test_cursor_file_is_written_atomically(tmp_path: Path) -> None:
    cursor = CursorFile(tmp_path / "bot" / "engine-events.cursor")
    assert cursor.load() == 0
    cursor.save(41)
    cursor.save(42)
    assert cursor.load() == 42
    assert sorted(p.name for p in cursor.path.parent.iterdir()) == ["engine-events.cursor"]
    cursor.path.write_text("garbage")
    assert cursor.load() == 0


def test_refit_target_prefers_discord_tiers_then_halves() -> None:
    # Believed 50 MiB (boosted), Discord refused 30 MiB: the server is back at 10 MiB.
    assert refit_target(30 * MiB, 50 * MiB) == int(10 * MiB * 0.95)
    # Under the smallest tier: the limit is unknown, ask for half, however small that is.
    assert refit_target(300_000, 10 * MiB) == 150_000
    assert refit_target(100_000, 10 * MiB) == 50_000
    # Over the limit the interaction announced (40 KiB): ask for that, with room for overhead.
    assert refit_target(70_000, 40 * 1024) == int(40 * 1024 * 0.95)


@pytest.mark.parametrize("believed", [1024, 40 * 1024, 64 * 1024, 10 * MiB, 50 * MiB, 100 * MiB])
def test_refit_target_is_always_below_what_was_refused(believed: int) -> None:
    for sent in (2048, 65_536, 65_537, 100_000, 10 * MiB, 10 * MiB + 1, 60 * MiB, 200 * MiB):
        assert 0 < refit_target(sent, believed) < sent, (sent, believed)


def test_sizes_are_said_in_the_unit_that_shows_them() -> None:
    assert (size(812), size(49_664), size(3 * MiB + MiB // 2)) == ("812 B", "48.5 KB", "3.5 MB")


def test_bot_imports_no_torch_and_no_engine() -> None:
    code = (
        "import sys\n"
        "import bot.app, bot.cli, bot.tracker, bot.cogs.render, bot.cogs.queue, bot.cogs.limits\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.split('.')[0] == 'engine')\n"
        "print(','.join(bad))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_")}
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == ""


def test_cli_refuses_to_start_without_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN" and not k.startswith("SPOOKY_")}
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "spooky.cli", "bot"],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert "no Discord bot token" in out.stderr and "DISCORD_TOKEN" in out.stderr


def test_shards_route_servers_as_discord_does() -> None:
    assert Shards().runs("175928847299117063") and Shards(4).runs(None)
    guild = str((1234 << 22) | 99)  # (id >> 22) % 4 == 2
    assert Shards(4, [2]).runs(guild) and not Shards(4, [0, 1, 3]).runs(guild)
    assert Shards(4, [0]).runs(None)  # direct messages come on shard 0
    assert Shards().cursor_name == "engine-events.cursor"
    assert Shards(4, [3, 1]).cursor_name == "engine-events.shards-1-3-of-4.cursor"


@pytest.mark.parametrize(
    ("section", "why"),
    [
        ({"shard_ids": [0]}, "needs shard_count"),
        ({"shard_count": 2, "shard_ids": [2]}, "from 0 to 1"),
        ({"shard_count": 2, "shard_ids": [1, 1]}, "distinct"),
        ({"shard_count": 0}, "greater than or equal to 1"),
    ],
)
def test_shard_settings_are_checked(section: dict, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(None, env={f"SPOOKY_BOT__{k.upper()}": json.dumps(v) for k, v in section.items()})
    assert why in str(e.value) and "bot." in str(e.value)


def test_delivery_state_round_trips_and_replacing_clears_what_the_new_one_lacks() -> None:
    held = DeliveryState(
        channel_id="2",
        guild_id="1",
        app_id="9",
        token="old",
        interaction_at=5.5,
        message_id="3",
        fallback="dm",
        user_id="7",
        dm_channel_id="8",
        held="dms_closed",
    )
    assert DeliveryState.from_client(held.to_client()) == held
    # A state stored before DM fallbacks existed reads as a channel fallback with no member.
    old = DeliveryState.from_client({"channel_id": "2", "token": "t"})
    assert (old.fallback, old.user_id, old.held) == ("channel", None, None)
    fresh = DeliveryState(channel_id="4", app_id="9", token="new", interaction_at=6.0, user_id="7")
    patch = fresh.replacing(held)
    # The engine merges the dict and drops keys sent empty: what is left is exactly the new state.
    merged = {k: v for k, v in (held.to_client() | patch).items() if v}
    assert DeliveryState.from_client(merged) == fresh
    assert patch["held"] == "" and patch["dm_channel_id"] == "" and patch["guild_id"] == ""
