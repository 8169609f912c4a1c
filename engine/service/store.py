"""The engine's durable state: jobs, events, artifacts index, last images and server limits.

`JobStore` is the interface the service codes against; `SQLiteStore` is the embedded default: one
SQLite file in WAL mode, every write in one `BEGIN IMMEDIATE` transaction, committed (fsync'd,
`synchronous=FULL`) before the API answers. Calls are synchronous and short; the service runs them
on one executor thread, the render thread calls them directly (a lock serialises the connection).

A PostgreSQL store could later let several engines share one queue. Its claim would compute the
same fair order as `scheduler.fair_slots` (round per user, then rank per server within the round,
then FIFO; `:r` is the current round, `coalesce(max(claim_round), 0)`) in a sub-select, and lock
the first candidate no other engine holds:

    WITH last AS (SELECT user_id, max(claim_round) AS l FROM jobs GROUP BY user_id),
    waiting AS (
      SELECT j.seq, j.guild_id,
             greatest(coalesce(last.l + 1, 0), :r)
               + row_number() OVER (PARTITION BY j.user_id ORDER BY j.seq) - 1 AS rnd
      FROM jobs j LEFT JOIN last USING (user_id) WHERE j.state = 'queued'),
    served AS (SELECT guild_id, count(*) AS n FROM jobs WHERE claim_round = :r GROUP BY guild_id),
    ranked AS (
      SELECT w.seq, w.rnd,
             CASE WHEN w.rnd = :r THEN coalesce(s.n, 0) ELSE 0 END
               + row_number() OVER (PARTITION BY w.rnd, w.guild_id ORDER BY w.seq) - 1 AS srank
      FROM waiting w LEFT JOIN served s ON s.guild_id IS NOT DISTINCT FROM w.guild_id)
    SELECT j.*, c.rnd FROM jobs j JOIN ranked c USING (seq)
    ORDER BY c.rnd, c.srank, c.seq
    FOR UPDATE OF j SKIP LOCKED LIMIT 1;
    -- then: UPDATE jobs SET state = 'running', claim_round = <rnd>, attempts = attempts + 1,
    --       started_at = now() WHERE seq = <seq>;   (same transaction)

Submit-time limits would take `pg_advisory_xact_lock` on the guild and on the user (and a global
one for engine.max_queue) instead of SQLite's database-wide write lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.service.scheduler import FairState, fair_slots
from spooky.contract import (
    Event,
    EventType,
    GuildLimits,
    JobKind,
    JobRequest,
    JobState,
    JobView,
    LastImage,
    LimitsChange,
    Progress,
    Refusal,
)
from spooky.errors import ConfigError, SpookyError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,      -- FIFO order
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    guild_id TEXT,
    channel_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    request TEXT NOT NULL,                      -- the JobRequest as accepted (JSON)
    spec TEXT NOT NULL,                         -- resolved settings the worker runs (JSON)
    source_artifact TEXT,                       -- nightmare input, resolved at submit
    idempotency_key TEXT UNIQUE,
    client TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    claim_round INTEGER,                        -- fair-queue round it was claimed in (scheduler)
    progress TEXT,
    artifacts TEXT NOT NULL DEFAULT '{}',
    result TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    error_code TEXT,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs(user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_guild ON jobs(guild_id, seq);
CREATE INDEX IF NOT EXISTS jobs_state_guild ON jobs(state, guild_id);
CREATE INDEX IF NOT EXISTS jobs_state_user ON jobs(state, user_id);
CREATE INDEX IF NOT EXISTS jobs_round ON jobs(claim_round, guild_id);
CREATE INDEX IF NOT EXISTS jobs_user_round ON jobs(user_id, claim_round);
-- recent_durations reads the newest finished jobs of a kind after every job: an index walk, not a
-- scan of the whole history; the retention sweep finds old jobs and their artifacts the same way.
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(kind, state, finished_at);
CREATE INDEX IF NOT EXISTS jobs_done_age ON jobs(finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,       -- strictly increasing, never reused
    job_id TEXT NOT NULL,
    type TEXT NOT NULL,
    at REAL NOT NULL,
    guild_id TEXT,
    channel_id TEXT,
    user_id TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id);
CREATE INDEX IF NOT EXISTS events_guild ON events(guild_id, id);

CREATE TABLE IF NOT EXISTS artifacts (
    id TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    path TEXT NOT NULL,                         -- relative to the artifacts folder
    job_id TEXT,
    width INTEGER,
    height INTEGER,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_age ON artifacts(created_at);

CREATE TABLE IF NOT EXISTS last_images (
    user_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    artifact_id TEXT NOT NULL,
    job_id TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (user_id, channel_id)
);

CREATE TABLE IF NOT EXISTS guild_limits (
    guild_id TEXT PRIMARY KEY,
    limits TEXT NOT NULL,
    updated_at REAL NOT NULL
);

-- One row rewritten by `probe_write`: whether a write fits on the disk again.
CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);

CREATE TABLE IF NOT EXISTS limits_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    at REAL NOT NULL,
    changes TEXT NOT NULL
);
"""

ACTIVE = (JobState.QUEUED.value, JobState.RUNNING.value)
#: Free pages given back to the file system after each retention batch (4 KiB each).
VACUUM_PAGES = 2000


class DiskFullError(SpookyError):
    """No space left for the database or the artifacts; fails a job or a request, not the engine."""

    code = "disk_full"


@dataclass
class StoreHealth:
    """The last write that failed for lack of space; cleared by the next write that commits."""

    full_since: float | None = None
    detail: str | None = None


#: A job found running at start this many times (the engine died while it ran) fails instead of
#: running again: once is bad luck, twice is likely the job itself.
MAX_ATTEMPTS = 2


@dataclass
class JobRow:
    """One job as stored."""

    seq: int
    id: str
    kind: JobKind
    state: JobState
    guild_id: str | None
    channel_id: str
    user_id: str
    request: JobRequest
    spec: dict[str, Any]
    source_artifact: str | None
    idempotency_key: str | None
    client: dict[str, str]
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    progress: dict[str, Any] | None
    artifacts: dict[str, str]
    result: dict[str, Any]
    error: str | None
    error_code: str | None
    delivered: bool

    def view(self, position: int | None = None, eta_s: float | None = None) -> JobView:
        artifacts = dict(self.artifacts)
        if self.source_artifact:
            artifacts.setdefault("source", self.source_artifact)
        request = self.request.model_copy(update={"client": self.client})
        return JobView(
            id=self.id,
            kind=self.kind,
            state=self.state,
            request=request,
            position=position,
            eta_s=eta_s,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            attempts=self.attempts,
            progress=Progress(**self.progress) if self.progress else None,
            artifacts=artifacts,
            result=self.result,
            error=self.error,
            error_code=self.error_code,
            delivered=self.delivered,
        )


@dataclass(frozen=True)
class NewJob:
    id: str
    request: JobRequest
    spec: dict[str, Any]
    source_artifact: str | None
    created_at: float


@dataclass(frozen=True)
class Counts:
    """Active jobs around a submit, read inside its write transaction."""

    global_active: int
    guild_active: int
    user_active: int
    user_last_submit: float | None


@dataclass(frozen=True)
class QueueEntry:
    """The columns ordering and ETAs need: no request parsing, so snapshots stay cheap."""

    seq: int
    id: str
    kind: JobKind
    state: JobState
    user_id: str
    guild_id: str | None
    spec: dict[str, Any]
    started_at: float | None


@dataclass(frozen=True)
class QueueSnapshot:
    """Waiting jobs (FIFO), running jobs, and the fair-queue memory: what ordering needs."""

    queued: list[QueueEntry]
    running: list[QueueEntry]
    fair: FairState


@dataclass
class Submitted:
    job: JobRow | None = None
    duplicate: bool = False
    refusal: Refusal | None = None
    event: Event | None = None  # the QUEUED event of a new job (its data: position, eta_s)


@dataclass(frozen=True)
class ArtifactRow:
    id: str
    media_type: str
    bytes: int
    path: str
    job_id: str | None = None
    width: int | None = None
    height: int | None = None
    created_at: float = field(default_factory=time.time)


#: decide(counts, limits) -> a refusal or None;
#: describe(snapshot) -> QUEUED event data (position, ETA) by job id, for the waiting jobs.
Decide = Callable[[Counts, GuildLimits], Refusal | None]
Describe = Callable[[QueueSnapshot], dict[str, dict[str, Any]]]


class JobStore(Protocol):
    """What the service needs from a store. Each method is one transaction."""

    health: StoreHealth  # set while writes fail for lack of space

    def submit(self, new: NewJob, decide: Decide, describe: Describe) -> Submitted: ...
    def submit_many(self, batch: list[tuple[NewJob, Decide]], describe: Describe) -> list[Submitted]: ...
    def find_idempotent(self, key: str) -> JobRow | None: ...
    def claim_next(self) -> JobRow | None: ...
    def get_job(self, job_id: str) -> JobRow | None: ...
    def get_jobs(self, job_ids: list[str]) -> list[JobRow]: ...
    def list_jobs(
        self,
        *,
        guild_id: str | None = None,
        user_id: str | None = None,
        state: JobState | None = None,
        undelivered: bool = False,
        limit: int = 100,
    ) -> list[JobRow]: ...
    def queue_snapshot(self) -> QueueSnapshot: ...
    def queue_length(self) -> int: ...
    def record_progress(self, job_id: str, progress: dict[str, Any], still: str | None) -> Event: ...
    def finish(
        self,
        job_id: str,
        state: JobState,
        event: EventType,
        data: dict[str, Any],
        *,
        artifacts: dict[str, str] | None = None,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        error_code: str | None = None,
        last_image: str | None = None,
    ) -> Event: ...
    def cancel_queued(self, job_id: str, by: str) -> Event | None: ...
    def requeue(self, job_id: str, reason: str) -> Event: ...
    def recover_interrupted(self, max_attempts: int) -> list[Event]: ...
    def set_client(self, job_id: str, client: dict[str, str]) -> JobRow | None: ...
    def mark_delivered(self, job_id: str) -> JobRow | None: ...
    def events_after(
        self, after: int, *, job_id: str | None = None, guild_id: str | None = None, limit: int = 500
    ) -> list[Event]: ...
    def last_event_id(self) -> int: ...
    def add_artifact(self, row: ArtifactRow) -> None: ...
    def get_artifact(self, artifact_id: str) -> ArtifactRow | None: ...
    def last_image(self, user_id: str, channel_id: str) -> LastImage | None: ...
    def expired_artifacts(self, cutoff: float, limit: int = ...) -> list[ArtifactRow]: ...
    def delete_artifacts(self, ids: list[str]) -> None: ...
    def known_artifacts(self, ids: list[str]) -> set[str]: ...
    def prune_events(self, cutoff: float, limit: int = ...) -> int: ...
    def prune_jobs(self, cutoff: float, limit: int) -> int: ...
    def vacuum_step(self, pages: int = ...) -> int: ...
    def probe_write(self) -> bool: ...
    def guild_limits(self, guild_id: str | None) -> GuildLimits: ...
    def update_limits(self, guild_id: str, actor_id: str, changes: dict[str, Any]) -> GuildLimits: ...
    def limits_log(self, guild_id: str, limit: int = 100) -> list[LimitsChange]: ...
    def recent_durations(self, kind: JobKind, n: int = 20) -> list[tuple[float, dict[str, Any]]]: ...
    def close(self) -> None: ...


class SQLiteStore:
    """`JobStore` on one SQLite file (WAL). Safe to call from several threads."""

    def __init__(
        self,
        path: Path,
        *,
        default_limits: GuildLimits | None = None,
        on_events: Callable[[int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.default_limits = default_limits or GuildLimits()
        #: Called with the newest event id after every commit that wrote events (any thread).
        self.on_events = on_events
        self.health = StoreHealth()
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._con.row_factory = sqlite3.Row
            # Before the first table exists (a no-op on older files): freed pages can then be
            # handed back in small steps (incremental_vacuum) instead of one long VACUUM.
            self._con.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._con.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before the API answers, even across a power cut.
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.execute("PRAGMA foreign_keys=ON")
            with self._lock:
                self._con.executescript(_SCHEMA)
            self._con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(
                f"the engine cannot open its database {self.path} for writing: {e}",
                hint=(
                    f"engine.data_dir ({self.path.parent}) must be a folder the engine's user can "
                    "write: it holds the SQLite file, its -wal/-shm files and the artifacts"
                ),
            ) from e
        self._pending_event_id = 0

    # --- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front (no upgrade races)."""
        with self._lock:
            self._pending_event_id = 0
            changes = self._con.total_changes
            try:
                self._con.execute("BEGIN IMMEDIATE")
                try:
                    yield self._con
                except BaseException:
                    if self._con.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                        self._con.execute("ROLLBACK")
                    raise
                self._con.execute("COMMIT")
            except sqlite3.Error as e:
                if getattr(e, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                    raise
                if self._con.in_transaction:
                    self._con.execute("ROLLBACK")
                raise self._full(e) from e
            if self.health.full_since is not None and self._con.total_changes > changes:
                # Space is back: a commit that wrote rows (an empty one proves nothing) went through.
                self.health = StoreHealth()
            newest = self._pending_event_id
        if newest and self.on_events is not None:
            self.on_events(newest)

    def probe_write(self) -> bool:
        """Try one small write (health asks while the disk is full); True when it committed."""
        try:
            with self._write() as con:
                con.execute("INSERT OR REPLACE INTO write_probe (id, at) VALUES (1, ?)", (time.time(),))
        except DiskFullError:
            return False
        return True

    def _full(self, e: sqlite3.Error) -> DiskFullError:
        detail = f"disk full: the database {self.path} cannot be written ({e})"
        self.health = StoreHealth(self.health.full_since or time.time(), detail)
        return DiskFullError(detail, hint=f"free space on the disk that holds {self.path.parent}")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._con.execute(sql, args).fetchall()

    def _event(self, con: sqlite3.Connection, job: JobRow, type_: EventType, data: dict[str, Any]) -> Event:
        at = time.time()
        cur = con.execute(
            "INSERT INTO events (job_id, type, at, guild_id, channel_id, user_id, data)"
            " VALUES (?,?,?,?,?,?,?)",
            (job.id, type_.value, at, job.guild_id, job.channel_id, job.user_id, json.dumps(data)),
        )
        event_id = int(cur.lastrowid or 0)
        self._pending_event_id = max(self._pending_event_id, event_id)
        return Event(
            id=event_id,
            job_id=job.id,
            type=type_,
            at=at,
            guild_id=job.guild_id,
            channel_id=job.channel_id,
            user_id=job.user_id,
            data=data,
        )

    @staticmethod
    def _job(row: sqlite3.Row) -> JobRow:
        return JobRow(
            seq=row["seq"],
            id=row["id"],
            kind=JobKind(row["kind"]),
            state=JobState(row["state"]),
            guild_id=row["guild_id"],
            channel_id=row["channel_id"],
            user_id=row["user_id"],
            request=JobRequest.model_validate_json(row["request"]),
            spec=json.loads(row["spec"]),
            source_artifact=row["source_artifact"],
            idempotency_key=row["idempotency_key"],
            client=json.loads(row["client"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            attempts=row["attempts"],
            progress=json.loads(row["progress"]) if row["progress"] else None,
            artifacts=json.loads(row["artifacts"]),
            result=json.loads(row["result"]),
            error=row["error"],
            error_code=row["error_code"],
            delivered=bool(row["delivered"]),
        )

    def _get(self, con: sqlite3.Connection, job_id: str) -> JobRow | None:
        row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def _must(self, con: sqlite3.Connection, job_id: str) -> JobRow:
        job = self._get(con, job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def _snapshot(self, con: sqlite3.Connection) -> QueueSnapshot:
        rows = [
            QueueEntry(
                seq=r["seq"],
                id=r["id"],
                kind=JobKind(r["kind"]),
                state=JobState(r["state"]),
                user_id=r["user_id"],
                guild_id=r["guild_id"],
                spec=json.loads(r["spec"]),
                started_at=r["started_at"],
            )
            for r in con.execute(
                "SELECT seq, id, kind, state, user_id, guild_id, spec, started_at FROM jobs"
                " WHERE state IN (?, ?) ORDER BY seq",
                ACTIVE,
            )
        ]
        queued = [j for j in rows if j.state is JobState.QUEUED]
        current = con.execute("SELECT coalesce(max(claim_round), 0) FROM jobs").fetchone()[0]
        users = sorted({j.user_id for j in queued})
        last_round = {}
        for i in range(0, len(users), 500):  # SQLite caps the number of bound parameters
            chunk = users[i : i + 500]
            marks = ",".join("?" * len(chunk))
            last_round.update(
                con.execute(
                    f"SELECT user_id, max(claim_round) FROM jobs WHERE user_id IN ({marks})"
                    " AND claim_round IS NOT NULL GROUP BY user_id",
                    chunk,
                ).fetchall()
            )
        served = dict(
            con.execute(
                "SELECT guild_id, count(*) FROM jobs WHERE claim_round = ? GROUP BY guild_id", (current,)
            ).fetchall()
        )
        return QueueSnapshot(
            queued=queued,
            running=[j for j in rows if j.state is JobState.RUNNING],
            fair=FairState(current_round=current, last_round=last_round, served=served),
        )

    def _overrides(self, con: sqlite3.Connection, guild_id: str | None) -> dict[str, Any]:
        if guild_id is None:
            return {}
        row = con.execute("SELECT limits FROM guild_limits WHERE guild_id = ?", (guild_id,)).fetchone()
        return json.loads(row["limits"]) if row else {}

    def _limits(self, con: sqlite3.Connection, guild_id: str | None) -> GuildLimits:
        # Only what moderators changed is stored; the rest follows the configured defaults.
        return GuildLimits.model_validate(
            {**self.default_limits.model_dump(), **self._overrides(con, guild_id)}
        )

    # --- jobs -------------------------------------------------------------------------------

    def find_idempotent(self, key: str) -> JobRow | None:
        rows = self._read("SELECT * FROM jobs WHERE idempotency_key = ?", (key,))
        return self._job(rows[0]) if rows else None

    def submit(self, new: NewJob, decide: Decide, describe: Describe) -> Submitted:
        """Check the limits and insert, atomically: concurrent submits cannot overshoot a limit."""
        return self.submit_many([(new, decide)], describe)[0]

    def submit_many(self, batch: list[tuple[NewJob, Decide]], describe: Describe) -> list[Submitted]:
        """Several submits in one transaction and one fsync (group commit).

        Each is judged after the ones before it in the batch, exactly as if they had come one by
        one, so limits stay exact; the answers go out only after the commit.
        """
        with self._write() as con:
            results = [self._submit_one(con, new, decide) for new, decide in batch]
            # Positions as they are when the batch commits, which is when the answers go out.
            data = describe(self._snapshot(con))
            for result in results:
                if result.job is not None and not result.duplicate:
                    result.event = self._event(con, result.job, EventType.QUEUED, data.get(result.job.id, {}))
            return results

    def _submit_one(self, con: sqlite3.Connection, new: NewJob, decide: Decide) -> Submitted:
        req = new.request
        who = req.requester
        if req.idempotency_key:
            row = con.execute(
                "SELECT * FROM jobs WHERE idempotency_key = ?", (req.idempotency_key,)
            ).fetchone()
            if row is not None:
                return Submitted(job=self._job(row), duplicate=True)
        counts = Counts(
            global_active=con.execute("SELECT count(*) FROM jobs WHERE state IN (?, ?)", ACTIVE).fetchone()[
                0
            ],
            guild_active=con.execute(
                "SELECT count(*) FROM jobs WHERE state IN (?, ?) AND guild_id IS ?", (*ACTIVE, who.guild_id)
            ).fetchone()[0],
            user_active=con.execute(
                "SELECT count(*) FROM jobs WHERE state IN (?, ?) AND user_id = ?", (*ACTIVE, who.user_id)
            ).fetchone()[0],
            user_last_submit=con.execute(
                "SELECT max(created_at) FROM jobs WHERE user_id = ?", (who.user_id,)
            ).fetchone()[0],
        )
        refusal = decide(counts, self._limits(con, who.guild_id))
        if refusal is not None:
            return Submitted(refusal=refusal)
        con.execute(
            "INSERT INTO jobs (id, kind, state, guild_id, channel_id, user_id, request, spec,"
            " source_artifact, idempotency_key, client, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                new.id,
                req.kind.value,
                JobState.QUEUED.value,
                who.guild_id,
                who.channel_id,
                who.user_id,
                req.model_dump_json(),
                json.dumps(new.spec),
                new.source_artifact,
                req.idempotency_key,
                json.dumps(req.client),
                new.created_at,
            ),
        )
        return Submitted(job=self._must(con, new.id))

    def claim_next(self) -> JobRow | None:
        """Mark the first job in fair order RUNNING (attempt + 1) and log STARTED; None when idle."""
        with self._write() as con:
            snap = self._snapshot(con)
            if not snap.queued:
                return None
            slot, first = fair_slots(snap.queued, snap.fair)[0]
            con.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, started_at = ?, progress = NULL,"
                " claim_round = ? WHERE id = ?",
                (JobState.RUNNING.value, time.time(), slot.round, first.id),
            )
            job = self._must(con, first.id)
            self._event(con, job, EventType.STARTED, {"attempt": job.attempts})
            return job

    def get_job(self, job_id: str) -> JobRow | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return self._job(rows[0]) if rows else None

    def get_jobs(self, job_ids: list[str]) -> list[JobRow]:
        """The jobs with these ids (unknown ids are left out), in the order given."""
        found: dict[str, JobRow] = {}
        for i in range(0, len(job_ids), 500):
            chunk = job_ids[i : i + 500]
            rows = self._read(f"SELECT * FROM jobs WHERE id IN ({','.join('?' * len(chunk))})", tuple(chunk))
            found.update((r["id"], self._job(r)) for r in rows)
        return [found[i] for i in job_ids if i in found]

    def list_jobs(
        self,
        *,
        guild_id: str | None = None,
        user_id: str | None = None,
        state: JobState | None = None,
        undelivered: bool = False,
        limit: int = 100,
    ) -> list[JobRow]:
        """The newest `limit` jobs matching every filter given, oldest first."""
        where, args = [], []
        if guild_id is not None:
            where.append("guild_id = ?")
            args.append(guild_id)
        if user_id is not None:
            where.append("user_id = ?")
            args.append(user_id)
        if state is not None:
            where.append("state = ?")
            args.append(JobState(state).value)
        if undelivered:
            where.append("delivered = 0")
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._read(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit))
        return [self._job(r) for r in reversed(rows)]

    def queue_snapshot(self) -> QueueSnapshot:
        with self._lock:
            return self._snapshot(self._con)

    def queue_length(self) -> int:
        return self._read("SELECT count(*) FROM jobs WHERE state = ?", (JobState.QUEUED.value,))[0][0]

    def record_progress(self, job_id: str, progress: dict[str, Any], still: str | None) -> Event:
        with self._write() as con:
            job = self._must(con, job_id)
            artifacts = dict(job.artifacts)
            if still:
                artifacts["still"] = still
            con.execute(
                "UPDATE jobs SET progress = ?, artifacts = ? WHERE id = ?",
                (json.dumps(progress), json.dumps(artifacts), job_id),
            )
            return self._event(con, job, EventType.PROGRESS, {**progress, "still": still})

    def finish(
        self,
        job_id: str,
        state: JobState,
        event: EventType,
        data: dict[str, Any],
        *,
        artifacts: dict[str, str] | None = None,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        error_code: str | None = None,
        last_image: str | None = None,
    ) -> Event:
        """Move a job to a terminal state, remember its last image, log the event: one transaction."""
        with self._write() as con:
            job = self._must(con, job_id)
            merged = {**job.artifacts, **(artifacts or {})}
            con.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, artifacts = ?, result = ?, error = ?,"
                " error_code = ? WHERE id = ?",
                (
                    state.value,
                    time.time(),
                    json.dumps(merged),
                    json.dumps(result or {}),
                    error,
                    error_code,
                    job_id,
                ),
            )
            if last_image is not None:
                con.execute(
                    "INSERT OR REPLACE INTO last_images (user_id, channel_id, artifact_id, job_id, at)"
                    " VALUES (?,?,?,?,?)",
                    (job.user_id, job.channel_id, last_image, job.id, time.time()),
                )
            return self._event(con, job, event, data)

    def cancel_queued(self, job_id: str, by: str) -> Event | None:
        """Cancel a job that has not started; None when it is no longer queued."""
        with self._write() as con:
            job = self._must(con, job_id)
            if job.state is not JobState.QUEUED:
                return None
            con.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ?, error_code = ? WHERE id = ?",
                (JobState.CANCELLED.value, time.time(), f"cancelled by {by}", "cancelled", job_id),
            )
            return self._event(con, job, EventType.CANCELLED, {"by": by})

    def requeue(self, job_id: str, reason: str) -> Event:
        """Put a running job back in the queue without counting the attempt (engine shutdown)."""
        with self._write() as con:
            job = self._must(con, job_id)
            con.execute(
                "UPDATE jobs SET state = ?, attempts = max(attempts - 1, 0), started_at = NULL,"
                " progress = NULL, claim_round = NULL WHERE id = ?",
                (JobState.QUEUED.value, job_id),
            )
            return self._event(con, job, EventType.INTERRUPTED, {"reason": reason, "retried": True})

    def recover_interrupted(self, max_attempts: int) -> list[Event]:
        """At start: jobs left RUNNING by a crash are requeued, or failed once out of attempts."""
        events: list[Event] = []
        with self._write() as con:
            for row in con.execute(
                "SELECT * FROM jobs WHERE state = ? ORDER BY seq", (JobState.RUNNING.value,)
            ):
                job = self._job(row)
                retry = job.attempts < max_attempts
                reason = f"the engine stopped during attempt {job.attempts}" + (
                    "; the job was put back in the queue"
                    if retry
                    else f"; it failed after {job.attempts} attempts"
                )
                events.append(
                    self._event(con, job, EventType.INTERRUPTED, {"reason": reason, "retried": retry})
                )
                if retry:
                    con.execute(
                        "UPDATE jobs SET state = ?, started_at = NULL, progress = NULL, claim_round = NULL"
                        " WHERE id = ?",
                        (JobState.QUEUED.value, job.id),
                    )
                else:
                    error = (
                        f"interrupted {job.attempts} times (the engine stopped while it ran); "
                        "not retried again"
                    )
                    con.execute(
                        "UPDATE jobs SET state = ?, finished_at = ?, error = ?, error_code = ? WHERE id = ?",
                        (JobState.FAILED.value, time.time(), error, "interrupted", job.id),
                    )
                    events.append(
                        self._event(con, job, EventType.FAILED, {"reason": error, "code": "interrupted"})
                    )
        return events

    def set_client(self, job_id: str, client: dict[str, str]) -> JobRow | None:
        """Merge the bot's bookkeeping into the job (an empty value removes the key)."""
        with self._write() as con:
            job = self._get(con, job_id)
            if job is None:
                return None
            merged = {**job.client, **client}
            merged = {k: v for k, v in merged.items() if v != ""}
            if len(merged) > 16:
                raise ValueError(
                    f"a job keeps at most 16 client entries; this change would make {len(merged)}"
                )
            con.execute("UPDATE jobs SET client = ? WHERE id = ?", (json.dumps(merged), job_id))
            return self._must(con, job_id)

    def mark_delivered(self, job_id: str) -> JobRow | None:
        with self._write() as con:
            if self._get(con, job_id) is None:
                return None
            con.execute("UPDATE jobs SET delivered = 1 WHERE id = ?", (job_id,))
            return self._must(con, job_id)

    def recent_durations(self, kind: JobKind, n: int = 20) -> list[tuple[float, dict[str, Any]]]:
        rows = self._read(
            "SELECT finished_at - started_at AS d, spec FROM jobs WHERE kind = ? AND state = ?"
            " AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
            (JobKind(kind).value, JobState.SUCCEEDED.value, n),
        )
        return [(float(r["d"]), json.loads(r["spec"])) for r in rows]

    # --- events -----------------------------------------------------------------------------

    def events_after(
        self, after: int, *, job_id: str | None = None, guild_id: str | None = None, limit: int = 500
    ) -> list[Event]:
        sql, args = "SELECT * FROM events WHERE id > ?", [after]
        if job_id is not None:
            sql += " AND job_id = ?"
            args.append(job_id)
        if guild_id is not None:
            sql += " AND guild_id = ?"
            args.append(guild_id)
        rows = self._read(sql + " ORDER BY id LIMIT ?", (*args, limit))
        return [
            Event(
                id=r["id"],
                job_id=r["job_id"],
                type=EventType(r["type"]),
                at=r["at"],
                guild_id=r["guild_id"],
                channel_id=r["channel_id"],
                user_id=r["user_id"],
                data=json.loads(r["data"]),
            )
            for r in rows
        ]

    def last_event_id(self) -> int:
        return int(self._read("SELECT coalesce(max(id), 0) FROM events")[0][0])

    def prune_events(self, cutoff: float, limit: int = 1_000_000) -> int:
        """Delete up to `limit` events older than `cutoff` of jobs that have finished."""
        with self._write() as con:
            cur = con.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ?"
                " AND job_id NOT IN (SELECT id FROM jobs WHERE state IN (?, ?)) ORDER BY id LIMIT ?)",
                (cutoff, *ACTIVE, limit),
            )
            return cur.rowcount

    # --- artifacts --------------------------------------------------------------------------

    def add_artifact(self, row: ArtifactRow) -> None:
        with self._write() as con:
            con.execute(
                "INSERT INTO artifacts (id, media_type, bytes, path, job_id, width, height, created_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (
                    row.id,
                    row.media_type,
                    row.bytes,
                    row.path,
                    row.job_id,
                    row.width,
                    row.height,
                    row.created_at,
                ),
            )

    def get_artifact(self, artifact_id: str) -> ArtifactRow | None:
        rows = self._read("SELECT * FROM artifacts WHERE id = ?", (artifact_id,))
        return ArtifactRow(**dict(rows[0])) if rows else None

    def last_image(self, user_id: str, channel_id: str) -> LastImage | None:
        rows = self._read(
            "SELECT l.artifact_id, l.job_id FROM last_images l JOIN artifacts a ON a.id = l.artifact_id"
            " WHERE l.user_id = ? AND l.channel_id = ?",
            (user_id, channel_id),
        )
        return LastImage(artifact_id=rows[0]["artifact_id"], job_id=rows[0]["job_id"]) if rows else None

    def expired_artifacts(self, cutoff: float, limit: int = 1_000_000) -> list[ArtifactRow]:
        """Up to `limit` artifacts older than `cutoff` that no last image and no waiting or running
        job refers to, oldest first."""
        rows = self._read(
            "SELECT * FROM artifacts WHERE created_at < ?"
            " AND id NOT IN (SELECT artifact_id FROM last_images)"
            " AND id NOT IN (SELECT source_artifact FROM jobs"
            "                WHERE state IN (?, ?) AND source_artifact IS NOT NULL)"
            " ORDER BY created_at LIMIT ?",
            (cutoff, *ACTIVE, limit),
        )
        return [ArtifactRow(**dict(r)) for r in rows]

    def delete_artifacts(self, ids: list[str]) -> None:
        with self._write() as con:
            con.executemany("DELETE FROM artifacts WHERE id = ?", [(i,) for i in ids])

    def known_artifacts(self, ids: list[str]) -> set[str]:
        """Those of `ids` that have a row (at most 500 ids per call)."""
        rows = self._read(f"SELECT id FROM artifacts WHERE id IN ({','.join('?' * len(ids))})", tuple(ids))
        return {r["id"] for r in rows}

    def prune_jobs(self, cutoff: float, limit: int) -> int:
        """Delete up to `limit` jobs that finished before `cutoff`, with their events; the number
        deleted. Jobs a last image points at stay (/nightmare without an image animates it); the
        limits log does not refer to jobs. Their artifacts are the artifact sweep's (it has the files).
        """
        with self._write() as con:
            ids = [
                r[0]
                for r in con.execute(
                    "SELECT id FROM jobs WHERE finished_at < ? AND state NOT IN (?, ?)"
                    " AND id NOT IN (SELECT job_id FROM last_images WHERE job_id IS NOT NULL)"
                    " ORDER BY finished_at LIMIT ?",
                    (cutoff, *ACTIVE, limit),
                )
            ]
            con.executemany("DELETE FROM events WHERE job_id = ?", [(i,) for i in ids])
            con.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
            return len(ids)

    def vacuum_step(self, pages: int = VACUUM_PAGES) -> int:
        """Give up to `pages` free pages back to the file system; the free pages left (0 when the
        file predates incremental vacuum: its pages are reused, only a full VACUUM shrinks it)."""
        with self._lock:
            if self._con.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # 2 = INCREMENTAL
                return 0
            self._con.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()
            return int(self._con.execute("PRAGMA freelist_count").fetchone()[0])

    # --- server limits ----------------------------------------------------------------------

    def guild_limits(self, guild_id: str | None) -> GuildLimits:
        with self._lock:
            return self._limits(self._con, guild_id)

    def update_limits(self, guild_id: str, actor_id: str, changes: dict[str, Any]) -> GuildLimits:
        """Apply a partial change (validated as a whole) and log who made it, in one transaction.

        Raises pydantic.ValidationError, with nothing written, when a value is out of range.
        """
        with self._write() as con:
            overrides = self._overrides(con, guild_id)
            updated = GuildLimits.model_validate({**self.default_limits.model_dump(), **overrides, **changes})
            now = time.time()
            applied = {k: updated.model_dump(mode="json")[k] for k in changes}
            con.execute(
                "INSERT OR REPLACE INTO guild_limits (guild_id, limits, updated_at) VALUES (?,?,?)",
                (guild_id, json.dumps({**overrides, **applied}), now),
            )
            con.execute(
                "INSERT INTO limits_log (guild_id, actor_id, at, changes) VALUES (?,?,?,?)",
                (guild_id, actor_id, now, json.dumps(applied)),
            )
            return updated

    def limits_log(self, guild_id: str, limit: int = 100) -> list[LimitsChange]:
        """The newest `limit` changes of a server, oldest first."""
        rows = self._read(
            "SELECT * FROM limits_log WHERE guild_id = ? ORDER BY id DESC LIMIT ?", (guild_id, limit)
        )
        return [
            LimitsChange(
                guild_id=r["guild_id"], actor_id=r["actor_id"], at=r["at"], changes=json.loads(r["changes"])
            )
            for r in reversed(rows)
        ]

    def close(self) -> None:
        with self._lock:
            self._con.close()
