"""Cost that does not grow with history: old job rows are pruned in small batches with their
events, what /nightmare and the limits log need stays, and the per-job reads use an index."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from service_helpers import make_settings, request, running_engine

from engine.service.spec import resolve
from engine.service.store import NewJob
from spooky.contract import EventType, JobKind, JobState


def _finish(store, job_id: str, *, last_image: str | None = None) -> None:
    store.claim_next()
    store.finish(job_id, JobState.SUCCEEDED, EventType.FINISHED, {}, last_image=last_image)


def _age(db: Path, seconds: float) -> None:
    """Make every stored row `seconds` older, as if the jobs had run that long ago."""
    con = sqlite3.connect(db)
    with con:
        con.execute(
            "UPDATE jobs SET created_at = created_at - ?, started_at = started_at - ?,"
            " finished_at = finished_at - ?",
            (seconds, seconds, seconds),
        )
        con.execute("UPDATE events SET at = at - ?", (seconds,))
        con.execute("UPDATE artifacts SET created_at = created_at - ?", (seconds,))
    con.close()


async def test_the_sweep_prunes_old_jobs_in_batches_and_keeps_what_is_still_needed(
    tmp_path: Path, monkeypatch
):
    import engine.service.core as core_module

    monkeypatch.setattr(core_module, "SWEEP_BATCH", 7)  # many batches from a small history
    settings = make_settings(tmp_path, engine={"artifact_retention_hours": 1})
    async with running_engine(settings, autoload=False) as (svc, client):
        store = svc.store
        ids = []
        for i in range(30):
            req = request(user=str(i))
            spec = resolve(req, settings.pipeline, settings.limits)
            new = NewJob(id=f"old-{i}", request=req, spec=spec, source_artifact=None, created_at=time.time())
            store.submit(new, lambda counts, limits: None, lambda snap: {})
            ids.append(new.id)
        kept_image = svc.files.write(b"png", "image/png", job_id="old-0")
        store.add_artifact(kept_image)
        for i, job_id in enumerate(ids):
            _finish(store, job_id, last_image=kept_image.id if i == 0 else None)
        await client.update_limits("100", actor_id="9", changes={"max_steps": 50})
        _age(svc.store.path, 2 * 3600)
        fresh = (await client.submit(request(user="777"))).job.id

        await svc.core.sweep()

        left = {r[0] for r in store._read("SELECT id FROM jobs")}
        # The job behind a last image, the newest claim (it carries the fair queue's current
        # round), and the one still queued.
        assert left == {"old-0", "old-29", fresh}
        orphans = store._read("SELECT count(*) FROM events WHERE job_id NOT IN (SELECT id FROM jobs)")
        assert orphans[0][0] == 0
        assert store.last_image("0", "200").artifact_id == kept_image.id
        assert [c.changes for c in store.limits_log("100")] == [{"max_steps": 50}]


def test_recent_durations_reads_an_index_not_the_whole_history(tmp_path: Path):
    from engine.service.store import SQLiteStore

    store = SQLiteStore(tmp_path / "engine.sqlite3")
    try:
        plan = store._read(
            "EXPLAIN QUERY PLAN SELECT finished_at - started_at AS d, spec FROM jobs WHERE kind = ?"
            " AND state = ? AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
            (JobKind.SPOOKY.value, JobState.SUCCEEDED.value, 20),
        )
        details = " ".join(r["detail"] for r in plan)
        assert "USING INDEX jobs_finished" in details and "TEMP B-TREE" not in details, details
        assert store._read("PRAGMA auto_vacuum")[0][0] == 2  # incremental: freed pages go back
    finally:
        store.close()


def test_a_vacuum_step_hands_back_the_pages_it_was_asked_for(tmp_path: Path):
    """Not one page per call: a backlog's freed pages go back in a few steps, not tens of
    thousands of write transactions."""
    from engine.service.store import SQLiteStore

    store = SQLiteStore(tmp_path / "engine.sqlite3")
    try:
        with store._write() as con:
            con.executemany(
                "INSERT INTO events (job_id, type, at, data) VALUES (?, 'queued', 0, ?)",
                [(f"j{i}", "x" * 2000) for i in range(3000)],
            )
        with store._write() as con:
            con.execute("DELETE FROM events")
        free = store._read("PRAGMA freelist_count")[0][0]
        assert free > 1000
        left = store.vacuum_step(pages=400)
        assert left == free - 400
        calls = 1
        while left:
            left = store.vacuum_step(pages=400)
            calls += 1
        assert calls == -(-free // 400)
    finally:
        store.close()


def test_the_bots_undelivered_jobs_query_reads_an_index(backend: str, open_at, monkeypatch):
    """`list_jobs(undelivered=True)`, asked by every bot shard every minute, walks the partial
    index of undelivered jobs: a long delivered history costs it nothing."""
    store = open_at()
    seen: list[tuple[str, tuple]] = []
    real = type(store)._read

    def recording(self, sql, args=()):
        seen.append((sql, tuple(args)))
        return real(self, sql, args)

    monkeypatch.setattr(type(store), "_read", recording)
    store.list_jobs(undelivered=True, limit=100)
    ((sql, args),) = seen
    monkeypatch.undo()
    if backend.startswith("postgresql://"):
        plan = store._read("EXPLAIN " + sql, args)
        text = " ".join(next(iter(r.values())) for r in plan)
    else:
        plan = store._read("EXPLAIN QUERY PLAN " + sql, args)
        text = " ".join(r["detail"] for r in plan)
    assert "jobs_undelivered" in text, text
