"""No import circles in bot/, counting imports under TYPE_CHECKING (tests/import_graph.py; its own
tests are in tests/engine/test_import_cycles.py)."""

from __future__ import annotations

from import_graph import format_cycles, import_cycles


def test_bot_has_no_import_cycle() -> None:
    cycles = import_cycles("bot")
    assert not cycles, format_cycles(cycles)
