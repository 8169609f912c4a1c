"""Making user text safe to echo in Discord: no markdown surprises, no pings."""

from __future__ import annotations

import discord

#: Sent with every message and edit: echoed prompts must never ping anyone.
NO_PINGS = discord.AllowedMentions.none()

_ZWSP = "\u200b"


def escape(text: str, *, limit: int = 300) -> str:
    """Show `text` literally: markdown escaped, every @ defused, one line, at most `limit` chars.

    `discord.utils.escape_mentions` only defuses ids of 17-20 digits, so `<@&123>` would still
    render as a role mention; a zero-width space after every @ breaks all mention forms.
    """
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    safe = discord.utils.escape_markdown(flat)
    return safe.replace("@", "@" + _ZWSP)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def duration(seconds: float | None) -> str:
    """Rough human duration: '40 s', '3 min', '1 h 5 min'."""
    if seconds is None:
        return "unknown"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{round(s / 60)} min"
    return f"{s // 3600} h {round((s % 3600) / 60)} min"


def size(n_bytes: int) -> str:
    """A file size as Discord states limits (binary units): '812 B', '48.5 KB', '3.4 MB'."""
    if n_bytes < 1024:
        return f"{n_bytes} B"
    if n_bytes < 1024 * 1024:
        return f"{n_bytes / 1024:.1f} KB"
    return f"{n_bytes / 2**20:.1f} MB"
