"""/limits set offers exactly the ranges the engine enforces (one definition: spooky.bounds)."""

from __future__ import annotations

import annotated_types
import discord

from bot.cogs.limits import Limits
from spooky.contract import LimitValues

#: The option of /limits set for each limit that has a default.
OPTIONS = {
    "max_queue_per_server": "queue_length",
    "max_jobs_per_user": "jobs_per_user",
    "cooldown_s": "cooldown",
    "max_steps": "max_steps",
    "max_scare_steps": "max_scare_steps",
    "max_frames": "max_frames",
    "allow_images": "allow_images",
    "default_prompt": "default_prompt",
}


def _range(field: str, low: type, high: type) -> tuple[object, object]:
    """The (lower, upper) bound the contract declares on `field`, by its annotated_types markers."""
    meta = LimitValues.model_fields[field].metadata
    lower = next(m for m in meta if isinstance(m, low))
    upper = next(m for m in meta if isinstance(m, high))
    return getattr(lower, "ge", getattr(lower, "min_length", None)), getattr(
        upper, "le", getattr(upper, "max_length", None)
    )


def test_limits_set_ranges_are_the_models_ranges() -> None:
    params = {p.name: p for p in Limits.set_.parameters}
    assert set(OPTIONS) == set(LimitValues.model_fields)  # a new limit needs its option here
    for field, option in OPTIONS.items():
        annotation = LimitValues.model_fields[field].annotation
        param = params[option]
        if annotation is bool:
            assert param.type is discord.AppCommandOptionType.boolean, field
        elif annotation is str:
            assert param.type is discord.AppCommandOptionType.string, field
            expected = _range(field, annotated_types.MinLen, annotated_types.MaxLen)
            assert (param.min_value, param.max_value) == expected, field
        else:
            expected = _range(field, annotated_types.Ge, annotated_types.Le)
            assert (param.min_value, param.max_value) == expected, field
