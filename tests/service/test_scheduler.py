"""The scheduler's pure functions: fair order (stable as the queue drains) and estimates."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from engine.service.scheduler import (
    PRIOR,
    FairState,
    fair_order,
    fair_slots,
    seconds_per_unit,
)
from engine.service.spec import nightmare_spec, spooky_spec
from spooky.config import PipelineConfig
from spooky.contract import JobKind


@dataclass(frozen=True)
class J:
    seq: int
    user_id: str
    guild_id: str | None = "g"


def test_round_robin_by_user_then_server_then_fifo():
    jobs = [J(1, "a"), J(2, "a"), J(3, "a"), J(4, "b"), J(5, "c", "h"), J(6, "b")]
    assert [j.seq for j in fair_order(jobs)] == [1, 5, 4, 2, 6, 3]


class Queue:
    """The store's bookkeeping in memory: claims stamp their round (what SQLiteStore does)."""

    def __init__(self) -> None:
        self.waiting: list[J] = []
        self.claimed: list[tuple[J, int]] = []
        self.seq = 0

    def submit(self, user: str, guild: str) -> None:
        self.seq += 1
        self.waiting.append(J(self.seq, user, guild))

    def state(self) -> FairState:
        current = max((r for _, r in self.claimed), default=0)
        last: dict[str, int] = {}
        served: dict[str | None, int] = {}
        for job, r in self.claimed:
            last[job.user_id] = max(last.get(job.user_id, -1), r)
            if r == current:
                served[job.guild_id] = served.get(job.guild_id, 0) + 1
        return FairState(current, last, served)

    def order(self) -> list[J]:
        return fair_order(self.waiting, self.state())

    def claim(self) -> J:
        slot, job = fair_slots(self.waiting, self.state())[0]
        self.waiting.remove(job)
        self.claimed.append((job, slot.round))
        return job


@pytest.mark.parametrize("seed", range(20))
def test_positions_do_not_shift_as_the_queue_drains(seed: int):
    rng = random.Random(seed)
    q = Queue()
    users = [f"u{i}" for i in range(rng.randint(2, 8))]
    for _ in range(400):
        if q.waiting and rng.random() < 0.5:
            before = q.order()
            assert q.claim() == before[0]
            assert q.order() == before[1:]  # claiming the head reorders nothing
        else:
            q.submit(rng.choice(users), rng.choice(["g1", "g2", "g3"]))


def test_a_heavy_user_waits_for_everyone_elses_turn_even_after_being_served():
    q = Queue()
    for _ in range(4):
        q.submit("heavy", "g1")
    assert q.claim().user_id == "heavy"
    q.submit("light", "g1")  # arrives while heavy's first job runs
    assert [j.user_id for j in q.order()] == ["light", "heavy", "heavy", "heavy"]
    q.claim()
    q.submit("late", "g2")  # a newcomer joins the current round, before heavy's next job
    assert [j.user_id for j in q.order()][:2] == ["late", "heavy"]


def test_eta_rate_starts_at_the_prior_and_follows_measurements():
    prior = PRIOR.per_unit[JobKind.SPOOKY]
    assert seconds_per_unit(JobKind.SPOOKY, []) == prior
    fast = seconds_per_unit(JobKind.SPOOKY, [(2.0 + 0.01 * 50, 50)] * 20)
    assert 0.01 < fast < prior / 5


async def test_first_etas_come_from_the_presets_measured_step_cost(tmp_path, tiny_models):
    from service_helpers import make_settings, running_engine

    from engine.service.scheduler import MEASURED, PRIOR, step_cost

    assert step_cost("full", "cuda:0") is PRIOR  # nobody measured a GPU yet: the guess stays
    assert step_cost("tiny", "cuda:0") is PRIOR and step_cost("tiny", None) is PRIOR
    async with running_engine(make_settings(tmp_path), tiny_models) as (svc, _):
        cost = step_cost("tiny", str(tiny_models.device))
        assert cost is MEASURED[("tiny", "cpu")] or not str(tiny_models.device).startswith("cpu")
        # No history yet: the ETA of a default spooky job is the tiny preset's measured cost,
        # not the GPU guess (which put it 7x too high on a CPU).
        spec = spooky_spec(PipelineConfig(), None, prompt="ghost", steps=40, scare_steps=10)
        assert svc.core.estimator.duration(spec) == pytest.approx(
            cost.overhead_s + 50 * cost.per_unit[JobKind.SPOOKY]
        )
        night = nightmare_spec(PipelineConfig(), None, prompt="ghost", frames=300)
        assert svc.core.estimator.duration(night) == pytest.approx(
            cost.overhead_s + 300 * cost.per_unit[JobKind.NIGHTMARE]
        )
