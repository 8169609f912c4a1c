"""Leases on both stores: a lapsed lease requeues (attempt counted) or fails after the last; a live
one is left alone; every write of a lost attempt is refused; cancel through the store; shard filter."""

from __future__ import annotations

import time

import pytest
from service_helpers import request
from test_store import submit

from engine.service.store import MAX_ATTEMPTS, ArtifactRow, JobStore, LeaseLostError
from spooky.contract import EventType, JobState

LEASE_S = 0.3


def _expire(store: JobStore, job_id: str) -> None:
    """Make the job's lease lapse now, as if its worker stopped renewing it long ago."""
    with store._write() as con:  # type: ignore[attr-defined]
        con.execute("UPDATE jobs SET lease_until = ? WHERE id = ?", (time.time() - 1, job_id))


def test_a_live_lease_is_left_alone_and_a_lapsed_one_requeued_with_its_attempt(store: JobStore, open_at):
    job = submit(store, request(user="1")).job
    claimed = store.claim_next("w1", 60)
    assert claimed.id == job.id and claimed.attempts == 1
    other = open_at()  # a second engine starting on the shared database
    assert other.recover_interrupted(MAX_ATTEMPTS, lapsed_only=True) == []
    assert other.get_job(job.id).state is JobState.RUNNING
    _expire(store, job.id)
    events = other.recover_interrupted(MAX_ATTEMPTS, lapsed_only=True)
    assert [e.type for e in events] == [EventType.INTERRUPTED] and events[0].data["retried"] is True
    assert "lease" in events[0].data["reason"]
    again = other.get_job(job.id)
    assert again.state is JobState.QUEUED and again.attempts == 1  # counted
    # A second reaper that read the row before the first took it takes nothing.
    assert other.recover_interrupted(MAX_ATTEMPTS, lapsed_only=True) == []


def test_after_the_last_attempt_a_lapsed_job_fails_saying_so(store: JobStore):
    job = submit(store, request(user="1")).job
    for _ in range(MAX_ATTEMPTS):
        assert store.claim_next("w", 60).id == job.id
        _expire(store, job.id)
        events = store.recover_interrupted(MAX_ATTEMPTS, lapsed_only=True)
    assert [e.type for e in events] == [EventType.INTERRUPTED, EventType.FAILED]
    failed = store.get_job(job.id)
    assert failed.state is JobState.FAILED and failed.error_code == "interrupted"
    assert f"interrupted {MAX_ATTEMPTS} times" in failed.error and "lease" in failed.error


def test_a_lost_attempt_writes_nothing_and_its_renewal_says_so(store: JobStore, open_at):
    job = submit(store, request(user="1")).job
    first = store.claim_next("w1", 60)
    assert store.renew_lease(job.id, first.attempts, 60).held
    _expire(store, job.id)
    other = open_at()
    other.recover_interrupted(MAX_ATTEMPTS, lapsed_only=True)
    second = other.claim_next("w2", 60)
    assert second.id == job.id and second.attempts == 2
    lease = store.renew_lease(job.id, first.attempts, 60)
    assert not lease.held
    with pytest.raises(LeaseLostError):
        store.record_progress(job.id, {"stage": "stylegan", "step": 1, "total": 2}, None, attempt=1)
    row = ArtifactRow(id="a-lost", media_type="image/png", bytes=1, path="x.png", job_id=job.id)
    with pytest.raises(LeaseLostError):
        store.add_artifact(row, attempt=1)
    with pytest.raises(LeaseLostError):
        store.finish(job.id, JobState.SUCCEEDED, EventType.FINISHED, {}, result={"by": "w1"}, attempt=1)
    with pytest.raises(LeaseLostError):
        store.requeue(job.id, "drain", attempt=1)
    other.finish(job.id, JobState.SUCCEEDED, EventType.FINISHED, {}, result={"by": "w2"}, attempt=2)
    done = store.get_job(job.id)
    assert done.state is JobState.SUCCEEDED and done.result == {"by": "w2"} and done.progress is None
    assert store.get_artifact("a-lost") is None
    # A finished job's attempt is over too: the late first worker cannot overwrite it.
    with pytest.raises(LeaseLostError):
        store.finish(job.id, JobState.FAILED, EventType.FAILED, {}, error="late", attempt=2)
    assert store.get_job(job.id).result == {"by": "w2"}


def test_a_cancel_reaches_the_renewal_of_whichever_worker_holds_the_job(store: JobStore, open_at):
    job = submit(store, request(user="1")).job
    claimed = store.claim_next("w1", 60)
    api = open_at()
    assert api.request_cancel(job.id, "42")
    assert store.renew_lease(job.id, claimed.attempts, 60).cancel_by == "42"
    queued = submit(store, request(user="2")).job
    assert not api.request_cancel(queued.id, "42")  # not running: cancel_queued's business


def test_the_shard_filter_keeps_each_bot_shards_servers(store: JobStore):
    # Discord: shard = (guild_id >> 22) % shard_count.
    guilds = {0: str(5 << 22), 1: str(6 << 22), 2: str(7 << 22)}
    ids = {n: submit(store, request(user=str(n), guild=g)).job.id for n, g in guilds.items()}
    dm = submit(store, request(user="9", guild=None)).job.id
    got = {j.id for j in store.list_jobs(undelivered=True, shards=(3, [2]))}  # 5 % 3 == 2
    assert got == {ids[0]}
    got = {j.id for j in store.list_jobs(undelivered=True, shards=(3, [0, 1]))}  # 6 % 3, 7 % 3
    assert got == {ids[1], ids[2], dm}  # direct messages go to shard 0


def test_one_node_at_a_time_takes_the_sweep(pg_url: str):
    from engine.service.store.postgres import PostgresStore

    first, second = PostgresStore(pg_url), PostgresStore(pg_url)
    try:
        assert first.try_lead("sweep") and not second.try_lead("sweep")
        first.release_lead("sweep")
        assert second.try_lead("sweep")
        second.close()  # a node that dies gives its turn back with its connection
        # The server ends the session's backend (and its locks) just after the client hangs up.
        deadline = time.monotonic() + 30
        while not first.try_lead("sweep"):
            assert time.monotonic() < deadline, "the closed connection's turn was never given back"
            time.sleep(0.05)
    finally:
        first.close()
        second.close()
