"""The scheduler's pure functions: fair order (stable as the queue drains), limits, estimates."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from service_helpers import request

from engine.service.scheduler import (
    PRIOR,
    FairState,
    Snapshot,
    banned_word_in,
    check_limits,
    fair_order,
    fair_slots,
    seconds_per_unit,
)
from engine.service.spec import nightmare_spec, spooky_spec
from spooky.config import PipelineConfig
from spooky.contract import GuildLimits, JobKind, RefusalCode


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


def test_banned_words_match_whole_words_case_insensitively():
    banned = ["clown", "pale fangs"]
    assert banned_word_in("An EVIL Clown", banned) == "clown"
    assert banned_word_in("clown's nose", banned) == "clown"
    assert banned_word_in("pale\t fangs", banned) == "pale fangs"
    assert banned_word_in("clowning around", banned) is None
    assert banned_word_in("pale fangsy", banned) is None
    assert banned_word_in("anything", []) is None


def _snap(limits: GuildLimits, **counts) -> Snapshot:
    base = {"global_active": 0, "guild_active": 0, "user_active": 0, "user_last_submit": None}
    return Snapshot(now=1000.0, limits=limits, max_queue=100, **{**base, **counts})


SPEC = spooky_spec(PipelineConfig(), None, prompt="x", steps=10, scare_steps=5)
NIGHT = nightmare_spec(PipelineConfig(), None, prompt="x", frames=10)


def test_moderators_skip_user_limits_but_not_the_server_state():
    limits = GuildLimits(max_jobs_per_user=1, cooldown_s=60)
    busy = _snap(limits, user_active=1, user_last_submit=990.0)
    assert check_limits(request(), SPEC, busy).code is RefusalCode.USER_LIMIT
    assert check_limits(request(), SPEC, _snap(limits, user_last_submit=990.0)).code is RefusalCode.COOLDOWN
    assert check_limits(request(moderator=True), SPEC, busy) is None
    paused = _snap(GuildLimits(paused=True))
    assert check_limits(request(moderator=True), SPEC, paused).code is RefusalCode.PAUSED
    full = _snap(GuildLimits(max_queue_per_server=3), guild_active=3)
    assert check_limits(request(moderator=True), SPEC, full).code is RefusalCode.SERVER_QUEUE_FULL


def test_refusals_say_the_values():
    r = check_limits(request(), SPEC, _snap(GuildLimits(cooldown_s=30), user_last_submit=990.0))
    assert r.retry_after_s == 20.0 and "20 s" in r.message and r.limit == "cooldown_s"
    long_night = NIGHT.model_copy(update={"frames": 500})
    r = check_limits(request("nightmare", "x"), long_night, _snap(GuildLimits(max_frames=300)))
    assert (r.code, r.allowed, r.limit) == (RefusalCode.OUT_OF_RANGE, "1–300", "max_frames")
    r = check_limits(request(), SPEC, Snapshot(1000.0, GuildLimits(), 5, 5, 0, 0, None))
    assert r.code is RefusalCode.QUEUE_FULL and "5 of 5" in r.message


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
