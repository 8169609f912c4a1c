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
        )

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
