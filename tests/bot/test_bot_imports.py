"""No import circles in bot/ or in the fake Discord, counting imports under TYPE_CHECKING
(tests/import_graph.py; its own tests are in tests/engine/test_import_cycles.py)."""

from __future__ import annotations

from pathlib import Path

from import_graph import format_cycles, import_cycles

TESTS_BOT = Path(__file__).resolve().parent


def test_bot_has_no_import_cycle() -> None:
    cycles = import_cycles("bot")
    assert not cycles, format_cycles(cycles)


def test_the_fake_discord_has_no_import_cycle() -> None:
    cycles = import_cycles("fake_discord", TESTS_BOT)
    assert not cycles, format_cycles(cycles)
