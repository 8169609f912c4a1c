"""Limits under concurrent submits, and the fair order the worker claims in (real SQLite file)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from service_helpers import make_settings, request, running_engine

from spooky.contract import EventType, JobState, RefusalCode
from spooky.engine_client import EngineRefused

USERS = [str(1000 + i) for i in range(20)]
GUILDS = ["501", "502", "503", "504"]


async def _claim_all(svc) -> list:
    """Claim and finish jobs one by one, as the worker does, with the store's real claim."""
    claimed = []
    while True:
        job = await svc.core.db(svc.store.claim_next)
        if job is None:
            return claimed
        claimed.append(job)
        await svc.core.db(svc.store.finish, job.id, JobState.SUCCEEDED, EventType.FINISHED, {})


async def test_200_concurrent_submits_never_exceed_a_limit_and_claims_are_fair(tmp_path: Path):
    settings = make_settings(
        tmp_path,
        engine={"max_queue": 40},
        limits={"max_jobs_per_user": 3, "max_queue_per_server": 12, "cooldown_s": 0},
    )
    async with running_engine(settings, autoload=False) as (svc, client):
        # 200 submits: every user sends 10, spread over the four servers.
        reqs = [request(user=USERS[i % 20], guild=GUILDS[(i // 20) % 4]) for i in range(200)]
        answers = await asyncio.gather(*(client.submit(r) for r in reqs), return_exceptions=True)
        accepted = [
            (r, a.job) for r, a in zip(reqs, answers, strict=True) if not isinstance(a, BaseException)
        ]
        refused = [(r, a) for r, a in zip(reqs, answers, strict=True) if isinstance(a, BaseException)]
        assert all(isinstance(a, EngineRefused) for _, a in refused), [a for _, a in refused][:3]

        per_user = Counter(r.requester.user_id for r, _ in accepted)
        per_guild = Counter(r.requester.guild_id for r, _ in accepted)
        assert max(per_user.values()) <= 3 and max(per_guild.values()) <= 12 and len(accepted) <= 40
        # Exact: a refusal happened only when its limit was really reached.
        for r, e in refused:
            code = e.refusal.code
            if code is RefusalCode.USER_LIMIT:
                assert per_user[r.requester.user_id] == 3
            elif code is RefusalCode.SERVER_QUEUE_FULL:
                assert per_guild[r.requester.guild_id] == 12
            else:
                assert code is RefusalCode.QUEUE_FULL and len(accepted) == 40
        stored = await client.jobs(limit=1000)
        assert sorted(j.id for j in stored) == sorted(j.id for _, j in accepted)

        # The positions the API reports are the order the worker claims in.
        views = {j.id: j for j in await client.jobs(state=JobState.QUEUED, limit=1000)}
        by_position = sorted(views.values(), key=lambda j: j.position)
        assert [j.position for j in by_position] == list(range(1, len(views) + 1))
        claimed = await _claim_all(svc)
        assert [j.id for j in claimed] == [j.id for j in by_position]
        # Fair: the first N claims cover all N users before anyone's second job.
        users = {j.user_id for j in claimed}
        assert {j.user_id for j in claimed[: len(users)]} == users


async def test_concurrent_submits_of_one_user_respect_the_cooldown(tmp_path: Path):
    settings = make_settings(tmp_path, limits={"max_jobs_per_user": 10, "cooldown_s": 60})
    async with running_engine(settings, autoload=False) as (_, client):
        answers = await asyncio.gather(
            *(client.submit(request(user="77")) for _ in range(10)), return_exceptions=True
        )
        ok = [a for a in answers if not isinstance(a, BaseException)]
        assert len(ok) == 1
        assert {a.refusal.code for a in answers if isinstance(a, EngineRefused)} == {RefusalCode.COOLDOWN}


async def test_one_users_burst_does_not_hold_others_back(tmp_path: Path):
    settings = make_settings(tmp_path, limits={"max_jobs_per_user": 10})
    async with running_engine(settings, autoload=False) as (svc, client):
        burst = [(await client.submit(request(user="1", guild="601"))).job.id for _ in range(5)]
        others = [
            (await client.submit(request(user=u, guild=g))).job.id for u, g in (("2", "601"), ("3", "602"))
        ]
        late = (await client.submit(request(user="4", guild="602"))).job.id
        # First round: every user's first job, servers taking turns (601, 602, 601, 602);
        # then user 1's other four.
        assert (await client.job(late)).position == 4
        claimed = [j.id for j in await _claim_all(svc)]
        assert claimed == [burst[0], others[1], others[0], late, *burst[1:]]
