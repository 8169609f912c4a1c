"""A job's settings resolved once: the request's values, else the config's, within the server's range.

The only place a job's defaults are applied and its seed is drawn. The engine resolves a request
when it accepts the job and stores the result; the CLI resolves its arguments the same way. The
renderer then runs exactly what the spec says, so a retry after a crash renders the same picture.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from spooky.bounds import MAX_SEED
from spooky.config import PipelineConfig
from spooky.contract import JobKind, JobRequest, JobSpec, LimitValues, NightmareSpec, SpookySpec


@dataclass(frozen=True)
class UnreadableSpec:
    """A stored spec that does not validate as a `JobSpec` (written by another version, or edited
    by hand): the scheduler counts it as no work and the worker fails the job with `reason`."""

    kind: JobKind
    reason: str


#: A job's settings as read back from the store (`store.sql.read_spec`).
StoredSpec = JobSpec | UnreadableSpec


def draw_seed() -> int:
    """A fresh seed in the contract's range; the job's result reports it, so it can be reproduced."""
    return secrets.randbelow(MAX_SEED + 1)


def spooky_spec(
    pipeline: PipelineConfig,
    limits: LimitValues | None,
    *,
    prompt: str,
    scare_prompt: str | None = None,
    seed: int | None = None,
    steps: int | None = None,
    scare_steps: int | None = None,
    size: tuple[int, int] | None = None,
) -> SpookySpec:
    """A spooky job's settings; `limits` None (the CLI) leaves the config's defaults uncapped."""
    default_steps, default_scare = pipeline.stylegan_steps, pipeline.scare_steps
    if limits is not None:  # a server's lower range caps the defaults, not what a request asks
        default_steps = min(default_steps, limits.max_steps)
        default_scare = min(default_scare, limits.max_scare_steps)
    return SpookySpec(
        prompt=prompt,
        scare_prompt=scare_prompt if scare_prompt is not None else prompt,
        seed=seed if seed is not None else draw_seed(),
        steps=steps if steps is not None else default_steps,
        scare_steps=scare_steps if scare_steps is not None else default_scare,
        size=size,
        still_every=pipeline.still_every,
    )


def nightmare_spec(
    pipeline: PipelineConfig,
    limits: LimitValues | None,
    *,
    prompt: str,
    seed: int | None = None,
    frames: int | None = None,
    size: tuple[int, int] | None = None,
    max_bytes: int | None = None,
) -> NightmareSpec:
    """A nightmare job's settings; `limits` None (the CLI) leaves the config's defaults uncapped."""
    default_frames = pipeline.nightmare_frames
    if limits is not None:
        default_frames = min(default_frames, limits.max_frames)
    return NightmareSpec(
        prompt=prompt,
        seed=seed if seed is not None else draw_seed(),
        frames=frames if frames is not None else default_frames,
        size=size,
        max_bytes=max_bytes or pipeline.video_max_bytes,
        still_every=pipeline.still_every,
    )


def resolve_spec(req: JobRequest, pipeline: PipelineConfig, limits: LimitValues) -> JobSpec:
    """The settings an accepted request runs with."""
    if JobKind(req.kind) is JobKind.SPOOKY:
        return spooky_spec(
            pipeline,
            limits,
            prompt=req.prompt,
            scare_prompt=req.scare_prompt,
            seed=req.seed,
            steps=req.steps,
            scare_steps=req.scare_steps,
            size=req.size,
        )
    return nightmare_spec(
        pipeline,
        limits,
        prompt=req.prompt,
        seed=req.seed,
        frames=req.frames,
        size=req.size,
        max_bytes=req.max_bytes,
    )
