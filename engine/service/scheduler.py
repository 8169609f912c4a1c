"""Fair queue order and ETAs: pure functions over store rows (no I/O).

The worker claims with `fair_order` and the API reports positions with the same function, so a
position shown to a user is the order the jobs will really run in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from engine.service.spec import StoredSpec
from spooky.contract import (
    JobKind,
    NightmareSpec,
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
        return spec.scare_steps if spec.from_image else spec.steps + spec.scare_steps
    if isinstance(spec, NightmareSpec):
        return spec.frames
    return 0


@dataclass(frozen=True)
class StepCost:
    """Seconds per step of each kind and a fixed cost per job (PNG/MP4 encoding, transfers)."""

    per_unit: dict[JobKind, float]
    overhead_s: float


#: Before any job has finished on a device nobody measured: a guess for a mid-range GPU at the
#: default sizes.
PRIOR = StepCost({JobKind.SPOOKY: 0.5, JobKind.NIGHTMARE: 0.4}, 2.0)
#: Step costs per (preset, device type) at the default pipeline settings, from the measurements in
#: docs/operators.md ("First ETAs"), so the first ETAs on a CPU are not a GPU guess. Measured
#: durations replace them as jobs finish.
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
