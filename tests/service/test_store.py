"""The store's promises, checked on both real stores (SQLite file, PostgreSQL server) by one suite."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from service_helpers import request

from engine.service.admission import Snapshot, check_limits
from engine.service.scheduler import Estimator, fair_slots, plan
from engine.service.spec import resolve
from engine.service.store import (
    DatabaseUnavailableError,
    JobStore,
    NewJob,
    SchemaTooNewError,
    SQLiteStore,
    UnreadableSpec,
    open_store,
)
from engine.service.store.postgres import PostgresStore
from spooky.config import PipelineConfig
from spooky.contract import (
    EventType,
    GuildLimits,
    JobKind,
    JobRequest,
    JobState,
    NightmareSpec,
    SpookySpec,
)

Opener = Callable[..., Any]


_ids = iter(range(10**9))


def new_job(req: JobRequest) -> NewJob:
    spec = resolve(req, PipelineConfig(stylegan_steps=2), GuildLimits())
    return NewJob(id=f"job{next(_ids)}", request=req, spec=spec, source_artifact=None, created_at=time.time())


def accept_all(counts: Any, limits: GuildLimits) -> None:
    return None


def no_positions(snapshot: Any) -> dict[str, dict[str, Any]]:
    return {}


def submit(store: JobStore, req: JobRequest, decide: Any = accept_all) -> Any:
    return store.submit(new_job(req), decide, no_positions)


def test_a_submitted_job_is_there_for_the_next_connection(store: JobStore, open_at: Opener):
    result = submit(store, request(user="7", guild="100", channel="5", idempotency_key="k-1"))
    assert result.job is not None and result.event is not None and result.event.type is EventType.QUEUED
    other = open_at()  # another connection (another API node) sees the committed job
    got = other.get_job(result.job.id)
    assert got is not None and got.state is JobState.QUEUED
    assert got.request.requester.user_id == "7"
    assert isinstance(got.spec, SpookySpec) and got.spec.steps == 2
    assert other.find_idempotent("k-1").id == result.job.id
    assert other.queue_length() == 1


def _store_spec(store: JobStore, job_id: str, text: str) -> None:
    """Write a job's spec column as another release (or a hand edit) left it."""
    with store._write() as con:  # type: ignore[attr-defined]
        con.execute("UPDATE jobs SET spec = ? WHERE id = ?", (text, job_id))


def test_specs_stored_as_plain_dicts_by_the_previous_release_still_load(store: JobStore):
    spooky = submit(store, request(prompt="pale ghost")).job
    night = submit(store, request("nightmare", user="2")).job
    # Exactly what the release before typed specs wrote: no kind, a null scare prompt, lists.
    _store_spec(
        store,
        spooky.id,
        '{"prompt": "pale ghost", "scare_prompt": null, "seed": 7, "steps": 4, "scare_steps": 2,'
        ' "size": [48, 32], "still_every": 5}',
    )
    _store_spec(
        store,
        night.id,
        '{"prompt": "nightmare", "seed": 9, "frames": 30, "size": null, "max_bytes": 10485760,'
        ' "still_every": 5}',
    )
    got = store.get_job(spooky.id).spec
    assert got == SpookySpec(
        prompt="pale ghost", scare_prompt="pale ghost", seed=7, steps=4, scare_steps=2, size=(48, 32),
        still_every=5,
    )  # fmt: skip
    assert store.get_job(night.id).spec == NightmareSpec(
        prompt="nightmare", seed=9, frames=30, size=None, max_bytes=10485760, still_every=5
    )
    queued = {e.id: e.spec for e in store.queue_snapshot().queued}
    assert queued[spooky.id] == got and isinstance(queued[night.id], NightmareSpec)


def test_a_spec_that_does_not_validate_is_that_jobs_error_only(store: JobStore):
    bad = submit(store, request(user="1")).job
    good = submit(store, request(user="2")).job
    _store_spec(store, bad.id, '{"prompt": "x", "seed": 1, "steps": "many"}')
    row = store.get_job(bad.id)
    assert isinstance(row.spec, UnreadableSpec) and row.spec.kind is JobKind.SPOOKY
    assert "steps" in row.spec.reason and row.view().id == bad.id  # its view still answers
    _store_spec(store, good.id, "not json")
    assert isinstance(store.get_job(good.id).spec, UnreadableSpec)
    # Planning reads every waiting job: the unreadable ones count as no work, the others as theirs.
    other = submit(store, request(user="3")).job
    snap = store.queue_snapshot()
    estimator = Estimator({k: 1.0 for k in JobKind}, 0.0)
    _, places, _ = plan(snap.queued, snap.running, snap.fair, estimator, time.time())
    assert [places[j.id].eta_s for j in (bad, good, other)] == [0.0, 0.0, 2 + 10]  # steps + scare steps


def test_an_idempotency_key_makes_one_job(store: JobStore, open_at: Opener):
    first = submit(store, request(idempotency_key="same"))
    again = submit(open_at(), request(idempotency_key="same"))
    assert again.duplicate and again.job.id == first.job.id and again.event is None
    assert [j.id for j in store.list_jobs()] == [first.job.id]


def _mixed_queue(store: JobStore, rng: random.Random, n: int) -> None:
    for _ in range(n):
        submit(store, request(user=str(rng.randint(1, 5)), guild=rng.choice(["100", "101", "102", None])))


def test_claims_follow_the_fair_order_as_jobs_come_and_go(store: JobStore):
    """Each claim takes the job `fair_slots` puts first, with the round it gives, through
    interleaved submits, claims and finishes (PostgreSQL computes the order in SQL)."""
    rng = random.Random(12)
    _mixed_queue(store, rng, 12)
    claimed = 0
    for _ in range(60):
        action = rng.random()
        if action < 0.3:
            _mixed_queue(store, rng, 1)
            continue
        running = store.list_jobs(state=JobState.RUNNING)
        if running and action < 0.5:
            store.finish(rng.choice(running).id, JobState.SUCCEEDED, EventType.FINISHED, {})
            continue
        snap = store.queue_snapshot()
        job = store.claim_next()
        if not snap.queued:
            assert job is None
            continue
        slot, expected = fair_slots(snap.queued, snap.fair)[0]
        assert job is not None and job.id == expected.id
        assert _claim_round(store, job.id) == slot.round
        claimed += 1
    assert claimed > 20


def test_concurrent_claimers_take_each_job_once_in_fair_order(open_at: Opener):
    first = open_at()
    _mixed_queue(first, random.Random(3), 40)
    snap = first.queue_snapshot()
    slots = fair_slots(snap.queued, snap.fair)
    position = {job.id: i for i, (_, job) in enumerate(slots)}
    predicted_round = {job.id: slot.round for slot, job in slots}
    claimers = [open_at() for _ in range(4)]
    taken: list[list[str]] = [[] for _ in claimers]
    start = threading.Barrier(len(claimers))

    def drain(i: int) -> None:
        start.wait()
        while (job := claimers[i].claim_next()) is not None:
            taken[i].append(job.id)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(claimers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [j for ids in taken for j in ids]
    assert sorted(every) == sorted(position), "a job was claimed twice or not at all"
    for ids in taken:
        # A claimer's next job is later in the fair order: everything before its last one was
        # already taken, or held by another claimer's open transaction.
        assert [position[j] for j in ids] == sorted(position[j] for j in ids)
    for job in first.get_jobs(every):
        assert job.state is JobState.RUNNING and job.attempts == 1
    assert {j: _claim_round(first, j) for j in every} == predicted_round


def test_limits_stay_exact_under_concurrent_submits(open_at: Opener):
    """Five connections submit at once for users and servers near their limits: no count overshoots."""
    limits = GuildLimits(max_jobs_per_user=3, max_queue_per_server=7, cooldown_s=0)
    stores = [open_at(default_limits=limits) for _ in range(5)]
    max_queue = 12
    results: list[Any] = []
    start = threading.Barrier(len(stores))

    def hammer(store: JobStore, seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        for _ in range(8):
            req = request(user=str(rng.randint(1, 6)), guild=rng.choice(["100", "101"]))
            now = time.time()
            spec = resolve(req, PipelineConfig(), limits)

            def decide(
                counts: Any, lim: GuildLimits, req: JobRequest = req, now: float = now, spec: Any = spec
            ) -> Any:
                return check_limits(
                    req, spec, Snapshot(now=now, limits=lim, max_queue=max_queue, **vars(counts))
                )

            results.append(store.submit(new_job(req), decide, no_positions))

    threads = [threading.Thread(target=hammer, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    accepted = [r.job for r in results if r.job is not None]
    refused = [r.refusal for r in results if r.refusal is not None]
    assert len(accepted) + len(refused) == 40 and refused
    assert len(accepted) == max_queue  # 40 tries for 12 places: the queue fills exactly
    per_user: dict[str, int] = {}
    per_guild: dict[str | None, int] = {}
    for job in stores[0].list_jobs(limit=100):
        per_user[job.user_id] = per_user.get(job.user_id, 0) + 1
        per_guild[job.guild_id] = per_guild.get(job.guild_id, 0) + 1
    assert max(per_user.values()) <= 3 and max(per_guild.values()) <= 7
    assert sum(per_user.values()) == len(accepted)


def test_events_from_concurrent_writers_reach_a_cursor_reader_without_gaps(open_at: Opener):
    """A reader that resumes from the last id it saw gets every event, in id order, once."""
    first = open_at()
    jobs = [submit(first, request(user=str(u))).job for u in range(1, 4)]
    writers = [open_at() for _ in jobs]
    done = threading.Event()
    seen: list[int] = []

    def write(store: JobStore, job_id: str) -> None:
        for step in range(40):
            store.record_progress(job_id, {"step": step, "total": 40}, None)

    def read() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            batch = first.events_after(cursor, limit=7)
            seen.extend(e.id for e in batch)
            cursor = batch[-1].id if batch else cursor
            if finished and not batch:
                return

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(s, j.id)) for s, j in zip(writers, jobs, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    reader.join(60)
    every = [e.id for e in first.events_after(0, limit=10_000)]
    assert len(every) == 3 + 3 * 40
    assert seen == every  # no gap, no repeat, increasing


def test_last_image_limits_log_and_artifacts(store: JobStore):
    from engine.service.store import ArtifactRow

    job = submit(store, request(user="7", channel="5")).job
    store.claim_next()
    for name in ("a1", "a2"):
        store.add_artifact(
            ArtifactRow(id=name, media_type="image/png", bytes=10, path=f"{name}.png", job_id=job.id)
        )
    store.finish(
        job.id, JobState.SUCCEEDED, EventType.FINISHED, {}, artifacts={"image": "a1"}, last_image="a1"
    )
    job2 = submit(store, request(user="7", channel="5")).job
    store.claim_next()
    store.finish(job2.id, JobState.SUCCEEDED, EventType.FINISHED, {}, last_image="a2")
    last = store.last_image("7", "5")
    assert last is not None and (last.artifact_id, last.job_id) == ("a2", job2.id)
    assert store.get_artifact("a1").path == "a1.png"
    # The last image outlives retention; a1 does not.
    assert [a.id for a in store.expired_artifacts(time.time() + 1)] == ["a1"]
    store.update_limits("100", "42", {"max_jobs_per_user": 2})
    store.update_limits("100", "43", {"paused": True})
    assert [(c.actor_id, c.changes) for c in store.limits_log("100")] == [
        ("42", {"max_jobs_per_user": 2}),
        ("43", {"paused": True}),
    ]
    got = store.guild_limits("100")
    assert got.max_jobs_per_user == 2 and got.paused


def test_cancel_and_requeue_and_recovery(store: JobStore, open_at: Opener):
    a = submit(store, request(user="1")).job
    b = submit(store, request(user="2")).job
    assert store.cancel_queued(a.id, "1").type is EventType.CANCELLED
    assert store.claim_next().id == b.id
    assert store.cancel_queued(b.id, "2") is None  # running: the worker stops it instead
    events = open_at().recover_interrupted(max_attempts=1)  # as at the next start
    assert [e.type for e in events] == [EventType.INTERRUPTED, EventType.FAILED]
    failed = store.get_job(b.id)
    assert failed.state is JobState.FAILED and failed.error_code == "interrupted"


def test_the_schema_is_versioned_and_a_newer_one_is_refused(
    backend: str, open_at: Opener, pg_server_or_none: Any
):
    store = open_at()
    newest = max(type(store).MIGRATIONS)
    assert store.schema_version() == newest
    submit(store, request(user="9"))
    store.close()
    _tamper(backend, pg_server_or_none, "UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaTooNewError) as raised:
        open_at()
    assert "schema version 99" in str(raised.value) and f"up to {newest}" in str(raised.value)


def test_the_schema_migrates_forward_keeping_the_data(open_at: Opener):
    old = open_at()
    job = submit(old, request(user="9")).job
    old.close()
    base = type(old)

    following = max(base.MIGRATIONS) + 1

    class Newer(base):  # type: ignore[misc, valid-type]
        MIGRATIONS: ClassVar = {**base.MIGRATIONS, following: ("ALTER TABLE jobs ADD COLUMN note TEXT",)}

    newer = open_at(Newer)
    assert newer.schema_version() == following
    assert newer.get_job(job.id).id == job.id
    assert newer._read("SELECT note FROM jobs")[0]["note"] is None  # the column exists
    newer.close()
    with pytest.raises(SchemaTooNewError):
        open_at(base)  # and the older code refuses the migrated database


def test_a_database_from_before_the_version_table_opens_as_version_1_and_migrates(tmp_path: Path):
    path = tmp_path / "old.sqlite3"
    SQLiteStore(path).close()
    con = sqlite3.connect(path)
    # What the releases before the version table left: version 1's tables, user_version = 1.
    con.execute("DROP TABLE schema_version")
    con.execute("DROP TABLE write_probe")
    con.execute("DROP INDEX jobs_finished")
    con.execute("DROP INDEX jobs_lease")
    for column in ("lease_until", "worker", "cancel_requested"):  # version 3's
        con.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    store = SQLiteStore(path)
    assert store.schema_version() == max(SQLiteStore.MIGRATIONS) > 1
    indexes = {r["name"] for r in store._read("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "jobs_finished" in indexes  # version 2 was applied to the old file
    store.close()


def test_pruning_keeps_the_rounds_the_fair_order_reads(store: JobStore):
    """Old finished jobs go, except those carrying the current round and a waiting user's last."""

    def run(user: str) -> str:
        job = submit(store, request(user=user)).job
        assert store.claim_next().id == job.id
        store.finish(job.id, JobState.SUCCEEDED, EventType.FINISHED, {})
        return job.id

    x1, y1, y2, z1, z2 = run("2"), run("1"), run("1"), run("3"), run("3")
    assert [_claim_round(store, j) for j in (x1, y1, y2, z1, z2)] == [0, 0, 1, 1, 2]
    waiting = submit(store, request(user="1")).job  # user 1 waits: their last round (1) is read
    time.sleep(0.01)
    assert store.prune_jobs(time.time(), limit=100) == 3
    left = {j.id for j in store.list_jobs(limit=100)}
    assert left == {y2, z2, waiting.id}  # user 1's last round, the newest claim, the waiting job
    assert store.claim_next().id == waiting.id and _claim_round(store, waiting.id) == 2


def test_open_store_picks_the_store_by_url(tmp_path: Path, pg_url: str):
    lite = open_store("", tmp_path / "engine.sqlite3")
    pg = open_store(pg_url, tmp_path / "unused.sqlite3")
    try:
        assert isinstance(lite, SQLiteStore) and isinstance(pg, PostgresStore)
        assert not (tmp_path / "unused.sqlite3").exists()
    finally:
        lite.close()
        pg.close()


def _claim_round(store: Any, job_id: str) -> int:
    return store._read("SELECT claim_round AS r FROM jobs WHERE id = ?", (job_id,))[0]["r"]


def _tamper(backend: str, server: Any, sql: str) -> None:
    if backend.startswith("postgresql://"):
        server.execute(backend, sql)
    else:
        con = sqlite3.connect(backend)
        con.execute(sql)
        con.commit()
        con.close()


@pytest.fixture
def pg_server_or_none(backend: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("pg_server") if backend.startswith("postgresql://") else None


async def test_the_engine_keeps_its_queue_in_postgres_when_database_url_is_set(tmp_path: Path, pg_url: str):
    from service_helpers import make_settings, running_engine

    settings = make_settings(tmp_path, engine={"database_url": pg_url})
    async with running_engine(settings, autoload=False) as (svc, client):
        assert isinstance(svc.store, PostgresStore)
        accepted = await client.submit(request(user="5", idempotency_key="via-api"))
    # Another connection finds it: it is in PostgreSQL, and no SQLite file was made.
    other = PostgresStore(pg_url)
    try:
        assert other.find_idempotent("via-api").id == accepted.job.id
    finally:
        other.close()
    assert not (tmp_path / "engine.sqlite3").exists()


def test_a_postgres_restart_is_a_typed_error_then_the_store_reconnects(pg_server: Any, pg_url: str):
    store = PostgresStore(pg_url)
    try:
        job = submit(store, request(user="3")).job
        pg_server.restart()  # every connection is cut; committed data stays
        with pytest.raises(DatabaseUnavailableError) as raised:
            store.get_job(job.id)
        assert "stopped answering" in str(raised.value)
        assert store.get_job(job.id).id == job.id  # the next call reconnects
        assert submit(store, request(user="4")).job is not None
    finally:
        store.close()


def test_an_unreachable_server_is_a_typed_error_that_hides_the_password():
    from support import free_port

    with pytest.raises(DatabaseUnavailableError) as raised:
        PostgresStore(f"postgresql://spooky:hunter2@127.0.0.1:{free_port()}/x", connect_timeout_s=2)
    assert "spooky:***@127.0.0.1" in str(raised.value) and "hunter2" not in str(raised.value)


def test_the_counts_a_submit_is_judged_by_include_running_jobs(store: JobStore):
    """A job that started still counts toward its user's and its server's limits, and a finished
    one does not: the counts come from the store, read in the submit's own transaction."""
    seen: list[Any] = []

    def record(counts: Any, limits: GuildLimits) -> None:
        seen.append(counts)

    first = submit(store, request(user="1", guild="100")).job
    submit(store, request(user="2", guild="100"))
    assert store.claim_next("w", 60).id == first.id  # user 1's job is running now
    submit(store, request(user="1", guild="100"), record)
    counts = seen[-1]
    assert (counts.user_active, counts.guild_active, counts.global_active) == (1, 2, 2)
    store.finish(first.id, JobState.SUCCEEDED, EventType.FINISHED, {})
    submit(store, request(user="1", guild="100"), record)
    assert (seen[-1].user_active, seen[-1].guild_active) == (1, 2)  # the finished one no longer counts
