"""What the bot keeps on each engine job (its `client` dict) to find the job's messages again.

The engine stores these strings and never reads them; a restarted bot rebuilds its view of every
unfinished job from them, so each field is a plain string on the wire and typed here. The dict
travels in `JobRequest.client` and, when it changes, in the body of PATCH /v1/jobs/{id}/client
(`spooky.contract.ClientState`, the contract's name for that body).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass
class DeliveryState:
    """The bot's bookkeeping of one job; field names are the keys stored on the engine."""

    channel_id: str | None = None
    guild_id: str | None = None
    app_id: str | None = None
    token: str | None = None
    # The token's life starts when Discord created the interaction (the snowflake's time).
    interaction_at: float = 0.0
    message_id: str | None = None  # the interaction's original response
    channel_message_id: str | None = None  # the bot's own message once the token is spent
    max_bytes: int | None = None  # the upload limit the interaction announced
    # Where the job's message goes once the token is spent: "channel", the interaction's channel
    # (a server that installed the app, where the bot may post), or "dm", the member's DMs
    # (everywhere else: the bot is not a member of the channel and may not post there).
    fallback: str = "channel"
    user_id: str | None = None  # the member who asked: whom a "dm" fallback writes to
    dm_channel_id: str | None = None  # that DM, once opened ("dm": channel_message_id is in it)
    # Set when the result could not be delivered and waits for its member: "dms_closed" (Discord
    # answered 50007). The member's /queue shows it with a button that posts it there.
    held: str | None = None

    @classmethod
    def from_client(cls, client: Mapping[str, str]) -> DeliveryState:
        """Read a job's `client` dict; unknown keys are ignored, malformed numbers read as unset."""
        return cls(
            channel_id=client.get("channel_id") or None,
            guild_id=client.get("guild_id") or None,
            app_id=client.get("app_id") or None,
            token=client.get("token") or None,
            interaction_at=_float(client.get("interaction_at")) or 0.0,
            message_id=client.get("message_id") or None,
            channel_message_id=client.get("channel_message_id") or None,
            max_bytes=int(found) if (found := _float(client.get("max_bytes"))) is not None else None,
            fallback="dm" if client.get("fallback") == "dm" else "channel",
            user_id=client.get("user_id") or None,
            dm_channel_id=client.get("dm_channel_id") or None,
            held=client.get("held") or None,
        )

    def replacing(self, old: DeliveryState) -> dict[str, str]:
        """The PATCH body that makes a job's stored `old` state this one: the engine merges a
        client dict, and an empty value removes a key."""
        mine = self.to_client()
        return {key: "" for key in old.to_client() if key not in mine} | mine

    def to_client(self) -> dict[str, str]:
        """The `client` dict to send to the engine (unset fields left out)."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = f"{value:.3f}" if isinstance(value, float) else str(value)
        return out


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
