"""A job's settings resolved once, and as the store reads them back.

The rules are the contract's (`spooky.contract.resolve_spec`: each spec field's `Default`); these
helpers feed it the engine's `[pipeline]` settings. The engine resolves a request when it accepts
the job and stores the result; the CLI resolves its arguments the same way. The renderer then runs
exactly what the spec says, so a retry after a crash renders the same picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spooky.config import PipelineConfig
from spooky.contract import (
    JobKind,
    JobRequest,
    JobSpec,
    LimitValues,
    NightmareSpec,
    SpookySpec,
    resolve_spec,
)


@dataclass(frozen=True)
class UnreadableSpec:
    """A stored spec that does not validate as a `JobSpec` (written by another version, or edited
    by hand): the scheduler counts it as no work and the worker fails the job with `reason`."""

    kind: JobKind
    reason: str


#: A job's settings as read back from the store (`store.sql.read_spec`).
StoredSpec = JobSpec | UnreadableSpec


def resolve(req: JobRequest, pipeline: PipelineConfig, limits: LimitValues) -> JobSpec:
    """The settings an accepted request runs with (`spooky.contract.resolve_spec`)."""
    return resolve_spec(req.kind, req.given(), pipeline.model_dump(), limits)


def spooky_spec(pipeline: PipelineConfig, limits: LimitValues | None = None, **given: Any) -> SpookySpec:
    """A spooky job's settings from keyword values (the CLI's arguments, a test's); `limits`
    None leaves the config's defaults uncapped."""
    return resolve_spec(JobKind.SPOOKY, given, pipeline.model_dump(), limits)  # type: ignore[return-value]


def nightmare_spec(
    pipeline: PipelineConfig, limits: LimitValues | None = None, **given: Any
) -> NightmareSpec:
    """A nightmare job's settings from keyword values (see `spooky_spec`)."""
    return resolve_spec(JobKind.NIGHTMARE, given, pipeline.model_dump(), limits)  # type: ignore[return-value]
