"""/limits set offers exactly the ranges the engine enforces (one definition: spooky.bounds)."""

from __future__ import annotations

import annotated_types

from bot.cogs.limits import Limits
from spooky.contract import LimitValues

#: The option of /limits set for each numeric limit.
OPTIONS = {
    "max_queue_per_server": "queue_length",
    "max_jobs_per_user": "jobs_per_user",
    "cooldown_s": "cooldown",
    "max_steps": "max_steps",
    "max_scare_steps": "max_scare_steps",
    "max_frames": "max_frames",
}
#: The other limits with a default, offered under their own names.
OTHER = {"allow_images", "default_prompt"}


def test_limits_set_ranges_are_the_models_ranges() -> None:
    params = {p.name: p for p in Limits.set_.parameters}
    assert set(OPTIONS) | OTHER == set(LimitValues.model_fields)  # a new limit needs its option here
    assert set(params) >= OTHER
    for field, option in OPTIONS.items():
        meta = LimitValues.model_fields[field].metadata
        low = next(m.ge for m in meta if isinstance(m, annotated_types.Ge))
        high = next(m.le for m in meta if isinstance(m, annotated_types.Le))
        assert (params[option].min_value, params[option].max_value) == (low, high), field
