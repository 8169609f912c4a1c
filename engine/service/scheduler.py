"""Fair queue order, ETAs and submit-time limits: pure functions over store rows (no I/O).

The worker claims with `fair_order` and the API reports positions with the same function, so a
position shown to a user is the order the jobs will really run in.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from engine.service.spec import StoredSpec
from spooky.contract import (
    GuildLimits,
    JobKind,
    JobRequest,
    JobSpec,
    NightmareSpec,
    Refusal,
    RefusalCode,
    SpookySpec,
)


class Queued(Protocol):
    """What ordering needs from a job row."""

    seq: int  # insertion order (FIFO)
    user_id: str
    guild_id: str | None


T = TypeVar("T", bound=Queued)


@dataclass(frozen=True)
class FairState:
    """What the claims so far leave behind, so that positions do not shift as the queue drains.

    Each claimed job is stamped with its round. Without that memory, a user's second job would
    become their "first waiting job" as soon as their first one started, and jump ahead again.
    """

    current_round: int = 0  # round of the last claimed job (never decreases)
    last_round: Mapping[str, int] = field(default_factory=dict)  # user -> round of their last claim
    served: Mapping[str | None, int] = field(default_factory=dict)  # server -> claims in current_round


@dataclass(frozen=True)
class Slot:
    round: int  # the user's turn: a user's k-th waiting job is in their first round + k
    server_rank: int  # within a round, the server's turn
    seq: int  # FIFO tie-break


def fair_slots(queued: Sequence[T], state: FairState = FairState()) -> list[tuple[Slot, T]]:
    """Waiting jobs in run order with their slots: round-robin by user, then by server, then FIFO.

    A user's k-th waiting job goes after every other user's (k-1)-th, so one user's five jobs do
    not hold anyone back; a user who was served in the current round (their job is running or
    just ran) starts in the next one, and a newcomer joins the current one. Within one round,
    servers take turns the same way (one busy server does not crowd out a small one), and then
    the earlier job goes first. Claiming the first job does not reorder the others.
    """
    next_round: dict[str, int] = {}
    by_round: list[tuple[int, T]] = []
    for job in sorted(queued, key=lambda j: j.seq):
        user = job.user_id
        if user not in next_round:
            next_round[user] = max(state.last_round.get(user, -1) + 1, state.current_round)
        by_round.append((next_round[user], job))
        next_round[user] += 1
    taken: dict[tuple[int, str | None], int] = defaultdict(int)
    slots: list[tuple[Slot, T]] = []
    for rnd, job in by_round:  # FIFO, so each server's jobs of a round get increasing ranks
        key = (rnd, job.guild_id)
        base = state.served.get(job.guild_id, 0) if rnd == state.current_round else 0
        slots.append((Slot(rnd, base + taken[key], job.seq), job))
        taken[key] += 1
    slots.sort(key=lambda s: (s[0].round, s[0].server_rank, s[0].seq))
    return slots


def fair_order(queued: Sequence[T], state: FairState = FairState()) -> list[T]:
    """`fair_slots` without the slots: the order jobs will run in."""
    return [job for _, job in fair_slots(queued, state)]


# --- work estimates -------------------------------------------------------------------------


def work_units(spec: StoredSpec) -> int:
    """Optimisation steps a job will run: what its duration scales with (none for a spec the
    store could not read: that job fails as soon as it is claimed)."""
    if isinstance(spec, SpookySpec):
        return spec.steps + spec.scare_steps
    if isinstance(spec, NightmareSpec):
        return spec.frames
    return 0


@dataclass(frozen=True)
class StepCost:
    """Seconds per step of each kind and a fixed cost per job (PNG/MP4 encoding, transfers)."""

    per_unit: dict[JobKind, float]
    overhead_s: float


#: Before any job has finished: a guess for a mid-range GPU at the default sizes (not measured).
PRIOR = StepCost({JobKind.SPOOKY: 0.5, JobKind.NIGHTMARE: 0.4}, 2.0)
#: Step costs measured per (preset, device type) at the default pipeline settings (32 cutouts):
#: tiny/cpu from `Renderer.spooky` with 5+2 and 25+10 steps and `Renderer.nightmare` with 10 and
#: 40 frames on the 2-core development machine (the slope is the cost per step, the intercept the
#: overhead); full/cpu from docs/operators.md "CPU measurements" (7.2 s per stage-1 step, 54 per
#: scare step, weighted 40:10 as the defaults run them; 38 s per frame). Without an entry (a GPU
#: nobody measured yet) the guess above is used. Measured durations replace them either way.
MEASURED: dict[tuple[str, str], StepCost] = {
    ("tiny", "cpu"): StepCost({JobKind.SPOOKY: 0.075, JobKind.NIGHTMARE: 0.24}, 0.2),
    ("full", "cpu"): StepCost({JobKind.SPOOKY: 16.6, JobKind.NIGHTMARE: 38.0}, 5.0),
}
JOB_OVERHEAD_S = PRIOR.overhead_s
#: The prior counts as this many observed jobs, so a single odd job does not swing the ETA.
PRIOR_WEIGHT = 2.0


def step_cost(preset: str | None, device: str | None) -> StepCost:
    """The measured step cost of `preset` on `device` ("cpu", "cuda:0", …), else the guess."""
    kind = (device or "").split(":")[0]
    return MEASURED.get((preset or "", kind), PRIOR)


def seconds_per_unit(kind: JobKind, samples: Sequence[tuple[float, int]], prior: StepCost = PRIOR) -> float:
    """Running average of seconds per step from recent (duration_s, units) of one kind."""
    total = prior.per_unit[kind] * PRIOR_WEIGHT
    weight = PRIOR_WEIGHT
    for duration, units in samples:
        if units > 0 and duration >= 0:
            total += max(duration - prior.overhead_s, 0.0) / units
            weight += 1
    return total / weight


@dataclass(frozen=True)
class Estimator:
    """Seconds a job is expected to take, from the measured rate of its kind."""

    rates: dict[JobKind, float]
    overhead_s: float = JOB_OVERHEAD_S

    def duration(self, spec: StoredSpec) -> float:
        return self.overhead_s + self.rates[spec.kind] * work_units(spec)


@dataclass(frozen=True)
class Placement:
    position: int  # 1 = next to run
    eta_s: float  # seconds until this job is expected to finish


class Planned(Queued, Protocol):
    id: str
    spec: StoredSpec
    started_at: float | None


P = TypeVar("P", bound=Planned)


def plan(
    queued: Sequence[P], running: Sequence[P], state: FairState, estimator: Estimator, now: float
) -> tuple[list[P], dict[str, Placement], float]:
    """Fair order of `queued`, each job's position and ETA, and the ETA of the whole queue."""
    ahead = 0.0
    for job in running:
        elapsed = now - (job.started_at or now)
        ahead += max(estimator.duration(job.spec) - elapsed, 1.0)
    order = fair_order(queued, state)
    places: dict[str, Placement] = {}
    for i, job in enumerate(order):
        ahead += estimator.duration(job.spec)
        places[job.id] = Placement(position=i + 1, eta_s=round(ahead, 1))
    return order, places, round(ahead, 1)


# --- limits ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The counts a submit is judged against, read inside the same write transaction."""

    now: float
    limits: GuildLimits
    max_queue: int  # EngineConfig.max_queue: waiting or running jobs across all servers
    global_active: int
    guild_active: int  # waiting or running jobs of this server (DMs count as one server)
    user_active: int  # waiting or running jobs of this user, on any server
    user_last_submit: float | None  # when this user's last accepted job was submitted, any server


def banned_word_in(text: str, banned: Sequence[str]) -> str | None:
    """The first banned word or phrase that occurs in `text` as a whole word, case-insensitively.

    Whole words, not substrings: banning "ass" must not refuse "glass"; a phrase such as "pale
    fangs" matches with any run of spaces between its words.
    """
    lowered = text.lower()
    for word in banned:
        parts = [re.escape(p) for p in word.lower().split()]
        if parts and re.search(r"(?<!\w)" + r"\s+".join(parts) + r"(?!\w)", lowered):
            return word
    return None


def _range_refusal(name: str, value: int, low: int, high: int, what: str) -> Refusal | None:
    if low <= value <= high:
        return None
    return Refusal(
        code=RefusalCode.OUT_OF_RANGE,
        message=f"{value} {what} is outside this server's range {low}–{high}; pick a value in it",
        limit=name,
        value=high,
        allowed=f"{low}–{high}",
    )


def check_limits(req: JobRequest, spec: JobSpec, snap: Snapshot) -> Refusal | None:
    """The first limit that refuses this request, or None when it may be queued.

    Moderators skip the per-user limits (jobs per user, cooldown) but not the server's state
    (paused, channels, banned words, ranges) nor the queue capacity.
    """
    lim = snap.limits
    who = req.requester
    if lim.paused:
        return Refusal(
            code=RefusalCode.PAUSED,
            message=(
                "rendering is paused on this server; a moderator can resume it with /limits set paused:false"
            ),
            limit="paused",
            value="true",
        )
    if lim.allowed_channels and who.channel_id not in lim.allowed_channels:
        shown = ", ".join(f"<#{c}>" for c in lim.allowed_channels[:10])
        return Refusal(
            code=RefusalCode.CHANNEL_NOT_ALLOWED,
            message=f"this channel is not open for rendering; use {shown}",
            limit="allowed_channels",
            allowed=",".join(lim.allowed_channels),
        )
    word = banned_word_in(" ".join(p for p in (req.prompt, req.scare_prompt) if p), lim.banned_words)
    if word is not None:
        return Refusal(
            code=RefusalCode.BANNED_WORD,
            message=f'the prompt contains "{word}", which this server does not allow; rephrase it',
            limit="banned_words",
            value=word,
        )
    if isinstance(spec, SpookySpec):
        refusal = _range_refusal("max_steps", spec.steps, 1, lim.max_steps, "steps") or _range_refusal(
            "max_scare_steps", spec.scare_steps, 0, lim.max_scare_steps, "scare steps"
        )
    else:
        refusal = _range_refusal("max_frames", spec.frames, 1, lim.max_frames, "frames")
    if refusal is not None:
        return refusal
    if not who.is_moderator:
        if snap.user_active >= lim.max_jobs_per_user:
            return Refusal(
                code=RefusalCode.USER_LIMIT,
                message=(
                    f"you already have {snap.user_active} job(s) waiting or running; this server allows "
                    f"{lim.max_jobs_per_user} at a time. Wait for one to finish or /cancel one"
                ),
                limit="max_jobs_per_user",
                value=lim.max_jobs_per_user,
                allowed=f"0–{lim.max_jobs_per_user}",
            )
        if snap.user_last_submit is not None and lim.cooldown_s > 0:
            left = snap.user_last_submit + lim.cooldown_s - snap.now
            if left > 0:
                return Refusal(
                    code=RefusalCode.COOLDOWN,
                    message=(
                        f"slow down: this server allows one job every {lim.cooldown_s:g} s; "
                        f"try again in {left:.0f} s"
                    ),
                    limit="cooldown_s",
                    value=lim.cooldown_s,
                    retry_after_s=round(left, 1),
                )
    if snap.guild_active >= lim.max_queue_per_server:
        return Refusal(
            code=RefusalCode.SERVER_QUEUE_FULL,
            message=(
                f"this server's queue is full ({snap.guild_active} of {lim.max_queue_per_server} jobs); "
                "try again when one has finished"
            ),
            limit="max_queue_per_server",
            value=lim.max_queue_per_server,
            allowed=f"0–{lim.max_queue_per_server}",
        )
    if snap.global_active >= snap.max_queue:
        return Refusal(
            code=RefusalCode.QUEUE_FULL,
            message=(
                f"the render queue is full ({snap.global_active} of {snap.max_queue} jobs "
                "across all servers); "
                "try again in a few minutes"
            ),
            limit="max_queue",
            value=snap.max_queue,
            allowed=f"0–{snap.max_queue}",
        )
    return None
