"""`SqlStore`: every `JobStore` method written once, in SQL that SQLite and PostgreSQL both run.

The SQL uses `?` placeholders, `IS NOT DISTINCT FROM`, `ON CONFLICT` upserts and `RETURNING`
(SQLite >= 3.39). Rows are read by column name only, so `sqlite3.Row` and psycopg's dict rows map
through the same code. What differs per engine is left to the subclass: the connection and its
transactions, the claim's pick of the next job, and the locks that keep limits exact and event
ids visible in order.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from pydantic import TypeAdapter, ValidationError

from engine.service.scheduler import FairState
from engine.service.spec import StoredSpec, UnreadableSpec
from engine.service.store.availability import Availability
from engine.service.store.base import (
    ACTIVE,
    VACUUM_PAGES,
    ArtifactRow,
    Counts,
    Decide,
    Describe,
    DiskFullError,
    JobRow,
    Lease,
    LeaseLostError,
    NewJob,
    QueueEntry,
    QueueSnapshot,
    SchemaTooNewError,
    StoreHealth,
    Submitted,
)
from spooky.bounds import CLIENT_MAX_ENTRIES, MAX_ERROR_CHARS
from spooky.contract import (
    Event,
    EventType,
    GuildLimits,
    JobErrorCode,
    JobKind,
    JobRequest,
    JobSpec,
    JobState,
    LastImage,
    LimitsChange,
)

Row = Mapping[str, Any]


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """The part of a DB-API connection the shared SQL needs (`?` placeholders)."""

    def execute(self, sql: str, args: Sequence[Any] = ...) -> Cursor: ...
    def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> Any: ...


_SPEC: TypeAdapter[JobSpec] = TypeAdapter(JobSpec)


def read_spec(kind: str, text: str) -> StoredSpec:
    """A stored spec as a `JobSpec`; one that does not validate is an `UnreadableSpec` of its job,
    so one bad row fails that job instead of every read that meets it.

    Specs written before specs were typed carry no `kind`: the row's own column gives it.
    """
    job_kind = JobKind(kind)
    try:
        data = json.loads(text)
        spec = _SPEC.validate_python({"kind": job_kind, **data} if isinstance(data, dict) else data)
    except (ValueError, ValidationError) as e:  # JSONDecodeError is a ValueError
        return UnreadableSpec(job_kind, f"its stored settings do not validate: {_errors(e)}")
    if spec.kind is not job_kind:
        return UnreadableSpec(job_kind, f"its stored settings are those of a {spec.kind.value} job")
    return spec


def _errors(e: Exception, shown: int = 3) -> str:
    """The first few validation errors, each as `field: what is wrong` (short: it is a job's error)."""
    if not isinstance(e, ValidationError):
        return str(e)[:MAX_ERROR_CHARS]
    # loc[0] is the union's tag (the kind): the field is what follows.
    parts = [
        f"{'.'.join(str(p) for p in err['loc'][1:]) or 'spec'}: {err['msg'][:MAX_ERROR_CHARS]}"
        for err in e.errors(include_url=False)[:shown]
    ]
    more = f" (and {e.error_count() - shown} more)" if e.error_count() > shown else ""
    return "; ".join(parts) + more


def job_row(row: Row) -> JobRow:
    """A stored job row as a `JobRow` (JSON columns parsed)."""
    return JobRow(
        seq=row["seq"],
        id=row["id"],
        kind=JobKind(row["kind"]),
        state=JobState(row["state"]),
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        user_id=row["user_id"],
        request=JobRequest.model_validate_json(row["request"]),
        spec=read_spec(row["kind"], row["spec"]),
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
        error_code=_error_code(row["error_code"]),
        delivered=bool(row["delivered"]),
    )


def _error_code(stored: str | None) -> JobErrorCode | None:
    """A stored error code; one this release does not know (written by another) reads as ERROR."""
    return None if stored is None else JobErrorCode.parse(stored)


def event_row(row: Row) -> Event:
    return Event(
        id=row["id"],
        job_id=row["job_id"],
        type=EventType(row["type"]),
        at=row["at"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        user_id=row["user_id"],
        data=json.loads(row["data"]),
    )


def lease_columns(real: str) -> tuple[str, ...]:
    """Schema version 3, the same on both stores but for the float type: who holds a running job,
    until when, and a cancel asked of whichever worker holds it."""
    return (
        f"ALTER TABLE jobs ADD COLUMN lease_until {real}",
        "ALTER TABLE jobs ADD COLUMN worker TEXT",
        "ALTER TABLE jobs ADD COLUMN cancel_requested TEXT",
        "CREATE INDEX IF NOT EXISTS jobs_lease ON jobs(state, lease_until)",
    )


#: Schema version 4, the same on both stores: the bot's sweep asks for the newest undelivered jobs
#: every minute, and without an index that reads the whole delivered history.
UNDELIVERED_INDEX = ("CREATE INDEX IF NOT EXISTS jobs_undelivered ON jobs(seq) WHERE delivered = 0",)


def split_script(script: str) -> list[str]:
    """A DDL script as single statements (no `;` inside one), for drivers that run one at a time."""
    return [s.strip() for s in script.split(";") if s.strip()]


class SqlStore:
    """The shared implementation; subclasses supply the connection and the engine-specific parts.

    One connection per store, serialised by a lock: the service runs store calls on one executor
    thread and the render thread calls them directly, so there is no contention to pool for.
    """

    #: version -> DDL statements that bring the schema from version - 1 to it; applied in order.
    MIGRATIONS: Mapping[int, Sequence[str]] = {}
    #: Whether a database server answers (None: an embedded file, there is no server to lose).
    availability: Availability | None = None

    def __init__(
        self,
        *,
        default_limits: GuildLimits | None = None,
        on_events: Callable[[int], None] | None = None,
    ) -> None:
        self.default_limits = default_limits or GuildLimits()
        #: Called with the newest event id after every commit that wrote events (any thread).
        self.on_events = on_events
        self.health = StoreHealth()
        self._lock = threading.RLock()
        self._pending_event_id = 0

    # --- what a subclass provides -----------------------------------------------------------

    def _transaction(self) -> AbstractContextManager[Connection]:
        """One write transaction, committed on exit (rolled back on an exception)."""
        raise NotImplementedError

    def _reading(self) -> AbstractContextManager[Connection]:
        """A connection for several reads that should see one state of the database."""
        raise NotImplementedError

    def _pick(self, con: Connection) -> tuple[str, int] | None:
        """The id and fair-queue round of the next job to claim, locked for this transaction."""
        raise NotImplementedError

    def _lock_submits(self, con: Connection, guild_ids: Sequence[str | None]) -> None:
        """Hold off other submits (and limit changes of these servers) until this one commits."""

    def _lock_limits(self, con: Connection, guild_id: str) -> None:
        """Hold off other changes of this server's limits until this one commits."""

    def _lock_job(self, con: Connection, job_id: str) -> None:
        """Hold this job's row until commit, so a read-modify-write of it cannot interleave."""

    def _lock_events(self, con: Connection) -> None:
        """Called before each event insert: events must become visible in id order."""

    def _notify(self, con: Connection, channel: str, payload: str) -> None:
        """Tell the other processes sharing the database, at commit (PostgreSQL's NOTIFY)."""

    def try_lead(self, name: str) -> bool:
        """Take the named node-wide turn (the retention sweep) unless another node holds it; held
        until `release_lead` or until this store's connection ends. One database user: always."""
        return True

    def release_lead(self, name: str) -> None:
        """Give back a turn `try_lead` took."""

    def _legacy_version(self, con: Connection) -> int:
        """The schema version of a database from before the version table (0: a new one)."""
        return 0

    def _describe_location(self) -> str:
        raise NotImplementedError

    # --- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._lock:
            self._pending_event_id = 0
            with self._transaction() as con:
                yield con
            newest = self._pending_event_id
        if newest and self.on_events is not None:
            self.on_events(newest)

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._reading() as con:
            return con.execute(sql, args).fetchall()

    def _migrate(self) -> int:
        """Bring the schema to the newest version this code knows; refuse a newer one."""
        known = max(self.MIGRATIONS)
        with self._write() as con:
            con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = con.execute("SELECT max(version) AS v FROM schema_version").fetchone()
            current = row["v"] if row["v"] is not None else self._legacy_version(con)
            if current > known:
                raise SchemaTooNewError(
                    f"{self._describe_location()} has schema version {current}; this SpookyGAN "
                    f"knows versions up to {known}",
                    hint="run the newer SpookyGAN that wrote it, or point database_url at another database",
                )
            for version in range(current + 1, known + 1):
                for statement in self.MIGRATIONS[version]:
                    con.execute(statement)
            if current != known or row["v"] is None:
                con.execute("DELETE FROM schema_version")
                con.execute("INSERT INTO schema_version (version) VALUES (?)", (known,))
        return known

    def schema_version(self) -> int:
        return int(self._read("SELECT max(version) AS v FROM schema_version")[0]["v"])

    def _event(self, con: Connection, job: JobRow, type_: EventType, data: dict[str, Any]) -> Event:
        at = time.time()
        self._lock_events(con)
        row = con.execute(
            "INSERT INTO events (job_id, type, at, guild_id, channel_id, user_id, data)"
            " VALUES (?,?,?,?,?,?,?) RETURNING id",
            (job.id, type_.value, at, job.guild_id, job.channel_id, job.user_id, json.dumps(data)),
        ).fetchone()
        event_id = int(row["id"])
        self._notify(con, "spooky_events", str(event_id))
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

    def _get(self, con: Connection, job_id: str) -> JobRow | None:
        row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return job_row(row) if row else None

    def _must(self, con: Connection, job_id: str, *, lock: bool = False) -> JobRow:
        if lock:
            self._lock_job(con, job_id)
        job = self._get(con, job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def _fenced(self, con: Connection, job_id: str, attempt: int | None) -> JobRow:
        """The job, locked; with `attempt`, only while that attempt still runs it (LeaseLostError)."""
        job = self._must(con, job_id, lock=True)
        if attempt is not None and (job.state is not JobState.RUNNING or job.attempts != attempt):
            raise LeaseLostError(
                f"job {job_id} is no longer held by attempt {attempt} (it is {job.state.value}, "
                f"attempt {job.attempts}); nothing was written for it"
            )
        return job

    def _snapshot(self, con: Connection) -> QueueSnapshot:
        rows = [
            QueueEntry(
                seq=r["seq"],
                id=r["id"],
                kind=JobKind(r["kind"]),
                state=JobState(r["state"]),
                user_id=r["user_id"],
                guild_id=r["guild_id"],
                spec=read_spec(r["kind"], r["spec"]),
                started_at=r["started_at"],
            )
            for r in con.execute(
                "SELECT seq, id, kind, state, user_id, guild_id, spec, started_at FROM jobs"
                " WHERE state IN (?, ?) ORDER BY seq",
                ACTIVE,
            ).fetchall()
        ]
        queued = [j for j in rows if j.state is JobState.QUEUED]
        current = con.execute("SELECT coalesce(max(claim_round), 0) AS r FROM jobs").fetchone()["r"]
        users = sorted({j.user_id for j in queued})
        last_round: dict[str, int] = {}
        for i in range(0, len(users), 500):  # SQLite caps the number of bound parameters
            chunk = users[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for r in con.execute(
                f"SELECT user_id, max(claim_round) AS r FROM jobs WHERE user_id IN ({marks})"
                " AND claim_round IS NOT NULL GROUP BY user_id",
                chunk,
            ).fetchall():
                last_round[r["user_id"]] = r["r"]
        served = {
            r["guild_id"]: r["n"]
            for r in con.execute(
                "SELECT guild_id, count(*) AS n FROM jobs WHERE claim_round = ? GROUP BY guild_id", (current,)
            ).fetchall()
        }
        return QueueSnapshot(
            queued=queued,
            running=[j for j in rows if j.state is JobState.RUNNING],
            fair=FairState(current_round=current, last_round=last_round, served=served),
        )

    def _overrides(self, con: Connection, guild_id: str | None) -> dict[str, Any]:
        if guild_id is None:
            return {}
        row = con.execute("SELECT limits FROM guild_limits WHERE guild_id = ?", (guild_id,)).fetchone()
        return json.loads(row["limits"]) if row else {}

    def _limits(self, con: Connection, guild_id: str | None) -> GuildLimits:
        # Only what moderators changed is stored; the rest follows the configured defaults.
        return GuildLimits.model_validate(
            {**self.default_limits.model_dump(), **self._overrides(con, guild_id)}
        )

    # --- jobs -------------------------------------------------------------------------------

    def find_idempotent(self, key: str) -> JobRow | None:
        rows = self._read("SELECT * FROM jobs WHERE idempotency_key = ?", (key,))
        return job_row(rows[0]) if rows else None

    def submit(self, new: NewJob, decide: Decide, describe: Describe) -> Submitted:
        """Check the limits and insert, atomically: concurrent submits cannot overshoot a limit."""
        return self.submit_many([(new, decide)], describe)[0]

    def submit_many(self, batch: list[tuple[NewJob, Decide]], describe: Describe) -> list[Submitted]:
        """Several submits in one transaction and one fsync (group commit).

        Each is judged after the ones before it in the batch, exactly as if they had come one by
        one, so limits stay exact; the answers go out only after the commit.
        """
        with self._write() as con:
            self._lock_submits(con, [new.request.requester.guild_id for new, _ in batch])
            results = [self._submit_one(con, new, decide) for new, decide in batch]
            # Positions as they are when the batch commits, which is when the answers go out.
            data = describe(self._snapshot(con))
            for result in results:
                if result.job is not None and not result.duplicate:
                    result.event = self._event(con, result.job, EventType.QUEUED, data.get(result.job.id, {}))
            return results

    def _submit_one(self, con: Connection, new: NewJob, decide: Decide) -> Submitted:
        req = new.request
        who = req.requester
        if req.idempotency_key:
            row = con.execute(
                "SELECT * FROM jobs WHERE idempotency_key = ?", (req.idempotency_key,)
            ).fetchone()
            if row is not None:
                return Submitted(job=job_row(row), duplicate=True)

        def one(sql: str, *args: Any) -> Any:
            return con.execute(sql, args).fetchone()["v"]

        counts = Counts(
            global_active=one("SELECT count(*) AS v FROM jobs WHERE state IN (?, ?)", *ACTIVE),
            # Without a server install (guild None) the "server" is the user's own context.
            guild_active=one(
                "SELECT count(*) AS v FROM jobs WHERE state IN (?, ?) AND guild_id = ?", *ACTIVE, who.guild_id
            )
            if who.guild_id is not None
            else one(
                "SELECT count(*) AS v FROM jobs WHERE state IN (?, ?) AND guild_id IS NULL AND user_id = ?",
                *ACTIVE,
                who.user_id,
            ),
            user_active=one(
                "SELECT count(*) AS v FROM jobs WHERE state IN (?, ?) AND user_id = ?", *ACTIVE, who.user_id
            ),
            user_last_submit=one("SELECT max(created_at) AS v FROM jobs WHERE user_id = ?", who.user_id),
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
                new.spec.model_dump_json(),
                new.source_artifact,
                req.idempotency_key,
                json.dumps(req.client),
                new.created_at,
            ),
        )
        self._notify(con, "spooky_jobs", "")
        return Submitted(job=self._must(con, new.id))

    def claim_next(self, worker: str = "", lease_s: float | None = None) -> JobRow | None:
        """Mark the first job in fair order RUNNING (attempt + 1) and log STARTED; None when idle.

        With `lease_s` the claim is a lease that `renew_lease` must keep extending: once it lapses,
        `recover_interrupted(lapsed_only=True)` gives the job to another worker.
        """
        with self._write() as con:
            picked = self._pick(con)
            if picked is None:
                return None
            job_id, claim_round = picked
            now = time.time()
            con.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, started_at = ?, progress = NULL,"
                " claim_round = ?, worker = ?, lease_until = ?, cancel_requested = NULL WHERE id = ?",
                (
                    JobState.RUNNING.value,
                    now,
                    claim_round,
                    worker or None,
                    now + lease_s if lease_s else None,
                    job_id,
                ),
            )
            job = self._must(con, job_id)
            self._event(con, job, EventType.STARTED, {"attempt": job.attempts})
            return job

    def renew_lease(self, job_id: str, attempt: int, lease_s: float) -> Lease:
        """Extend this attempt's lease; whether it still holds the job, and a cancel asked of it."""
        with self._write() as con:
            row = con.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = ? AND attempts = ?"
                " RETURNING cancel_requested",
                (time.time() + lease_s, job_id, JobState.RUNNING.value, attempt),
            ).fetchone()
        return Lease(held=False) if row is None else Lease(held=True, cancel_by=row["cancel_requested"])

    def request_cancel(self, job_id: str, by: str) -> bool:
        """Ask whichever worker runs `job_id` to stop it (it sees the request when it renews its
        lease, or at once through a NOTIFY); False when the job is not running."""
        with self._write() as con:
            cur = con.execute(
                "UPDATE jobs SET cancel_requested = ? WHERE id = ? AND state = ?",
                (by, job_id, JobState.RUNNING.value),
            )
            if cur.rowcount:
                self._notify(con, "spooky_cancel", job_id)
            return bool(cur.rowcount)

    def get_job(self, job_id: str) -> JobRow | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return job_row(rows[0]) if rows else None

    def get_jobs(self, job_ids: list[str]) -> list[JobRow]:
        """The jobs with these ids (unknown ids are left out), in the order given."""
        found: dict[str, JobRow] = {}
        for i in range(0, len(job_ids), 500):
            chunk = job_ids[i : i + 500]
            rows = self._read(f"SELECT * FROM jobs WHERE id IN ({','.join('?' * len(chunk))})", tuple(chunk))
            found.update((r["id"], job_row(r)) for r in rows)
        return [found[i] for i in job_ids if i in found]

    def list_jobs(
        self,
        *,
        guild_id: str | None = None,
        user_id: str | None = None,
        state: JobState | None = None,
        undelivered: bool = False,
        shards: tuple[int, list[int]] | None = None,
        limit: int = 100,
    ) -> list[JobRow]:
        """The newest `limit` jobs matching every filter given, oldest first.

        `shards` = (shard_count, shard_ids): only jobs of servers those bot shards serve (Discord's
        rule: shard = (guild_id >> 22) % shard_count); direct messages belong to shard 0.
        """
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
        if shards is not None:
            count, ids = shards
            marks = ",".join("?" * len(ids))
            dm = " OR guild_id IS NULL" if 0 in ids else ""
            # x - x / n * n is x mod n in both engines' integer arithmetic (the shared SQL has no '%').
            shard = "(CAST(guild_id AS BIGINT) >> 22) - (CAST(guild_id AS BIGINT) >> 22) / ? * ?"
            where.append(f"({shard} IN ({marks}){dm})")
            args.extend([count, count, *ids])
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._read(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit))
        return [job_row(r) for r in reversed(rows)]

    def queue_snapshot(self) -> QueueSnapshot:
        with self._reading() as con:
            return self._snapshot(con)

    def queue_length(self) -> int:
        return self._read("SELECT count(*) AS n FROM jobs WHERE state = ?", (JobState.QUEUED.value,))[0]["n"]

    def record_progress(
        self, job_id: str, progress: dict[str, Any], still: str | None, *, attempt: int | None = None
    ) -> Event:
        with self._write() as con:
            job = self._fenced(con, job_id, attempt)
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
        error_code: JobErrorCode | None = None,
        last_image: str | None = None,
        attempt: int | None = None,
    ) -> Event:
        """Move a job to a terminal state, remember its last image, log the event: one transaction.
        With `attempt`, only while that attempt holds the job (else LeaseLostError, nothing written)."""
        with self._write() as con:
            job = self._fenced(con, job_id, attempt)
            merged = {**job.artifacts, **(artifacts or {})}
            con.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, artifacts = ?, result = ?, error = ?,"
                " error_code = ?, lease_until = NULL WHERE id = ?",
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
                    "INSERT INTO last_images (user_id, channel_id, artifact_id, job_id, at)"
                    " VALUES (?,?,?,?,?) ON CONFLICT (user_id, channel_id)"
                    " DO UPDATE SET artifact_id = excluded.artifact_id,"
                    " job_id = excluded.job_id, at = excluded.at",
                    (job.user_id, job.channel_id, last_image, job.id, time.time()),
                )
            return self._event(con, job, event, data)

    def cancel_queued(self, job_id: str, by: str) -> Event | None:
        """Cancel a job that has not started; None when it is no longer queued."""
        with self._write() as con:
            job = self._must(con, job_id, lock=True)
            if job.state is not JobState.QUEUED:
                return None
            con.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ?, error_code = ? WHERE id = ?",
                (
                    JobState.CANCELLED.value,
                    time.time(),
                    f"cancelled by {by}",
                    JobErrorCode.CANCELLED.value,
                    job_id,
                ),
            )
            return self._event(con, job, EventType.CANCELLED, {"by": by})

    def requeue(self, job_id: str, reason: str, *, attempt: int | None = None) -> Event:
        """Put a running job back in the queue without counting the attempt (engine shutdown)."""
        with self._write() as con:
            job = self._fenced(con, job_id, attempt)
            con.execute(
                "UPDATE jobs SET state = ?, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,"
                " started_at = NULL, progress = NULL, claim_round = NULL, lease_until = NULL WHERE id = ?",
                (JobState.QUEUED.value, job_id),
            )
            self._notify(con, "spooky_jobs", "")
            return self._event(con, job, EventType.INTERRUPTED, {"reason": reason, "retried": True})

    def recover_interrupted(self, max_attempts: int, *, lapsed_only: bool = False) -> list[Event]:
        """Running jobs whose attempt ended without an outcome are requeued, or failed once out of
        attempts. At the start of the only engine (SQLite) every running job is such a one; with
        `lapsed_only` (a shared database) only those whose lease lapsed: another live worker's job
        is left alone. Each row is taken with a conditional update, so reapers on several nodes
        never both take the same attempt."""
        now = time.time()
        lapsed = " AND (lease_until IS NULL OR lease_until < ?)" if lapsed_only else ""
        guard = (now,) if lapsed_only else ()
        why = "its worker stopped renewing its lease" if lapsed_only else "the engine stopped"
        with self._write() as con:
            jobs = [
                job_row(r)
                for r in con.execute(
                    f"SELECT * FROM jobs WHERE state = ?{lapsed} ORDER BY seq",
                    (JobState.RUNNING.value, *guard),
                ).fetchall()
            ]
            # Every row is updated before the first event is written: row locks are always taken
            # before the event lock (see _lock_events), so concurrent writers cannot deadlock.
            outcomes: list[tuple[JobRow, bool, str, str | None]] = []
            taken = f" WHERE id = ? AND state = ? AND attempts = ?{lapsed}"
            for job in jobs:
                retry = job.attempts < max_attempts
                reason = f"{why} during attempt {job.attempts}" + (
                    "; the job was put back in the queue"
                    if retry
                    else f"; it failed after {job.attempts} attempts"
                )
                error = None
                keys = (job.id, JobState.RUNNING.value, job.attempts, *guard)
                if retry:
                    cur = con.execute(
                        "UPDATE jobs SET state = ?, started_at = NULL, progress = NULL, claim_round = NULL,"
                        " lease_until = NULL" + taken,
                        (JobState.QUEUED.value, *keys),
                    )
                else:
                    error = f"interrupted {job.attempts} times ({why} while it ran); not retried again"
                    cur = con.execute(
                        "UPDATE jobs SET state = ?, finished_at = ?, error = ?, error_code = ?,"
                        " lease_until = NULL" + taken,
                        (JobState.FAILED.value, time.time(), error, JobErrorCode.INTERRUPTED.value, *keys),
                    )
                if cur.rowcount:  # 0: its worker renewed or finished it meanwhile, or another reaper took it
                    outcomes.append((job, retry, reason, error))
            if any(retry for _, retry, _, _ in outcomes):
                self._notify(con, "spooky_jobs", "")
            events: list[Event] = []
            for job, retry, reason, error in outcomes:
                events.append(
                    self._event(con, job, EventType.INTERRUPTED, {"reason": reason, "retried": retry})
                )
                if error is not None:
                    events.append(
                        self._event(
                            con,
                            job,
                            EventType.FAILED,
                            {"reason": error, "code": JobErrorCode.INTERRUPTED.value},
                        )
                    )
        return events

    def set_client(self, job_id: str, client: dict[str, str]) -> JobRow | None:
        """Merge the bot's bookkeeping into the job (an empty value removes the key)."""
        with self._write() as con:
            self._lock_job(con, job_id)
            job = self._get(con, job_id)
            if job is None:
                return None
            merged = {**job.client, **client}
            merged = {k: v for k, v in merged.items() if v != ""}
            if len(merged) > CLIENT_MAX_ENTRIES:
                raise ValueError(
                    f"a job keeps at most {CLIENT_MAX_ENTRIES} client entries; "
                    f"this change would make {len(merged)}"
                )
            con.execute("UPDATE jobs SET client = ? WHERE id = ?", (json.dumps(merged), job_id))
            return self._must(con, job_id)

    def mark_delivered(self, job_id: str) -> JobRow | None:
        with self._write() as con:
            self._lock_job(con, job_id)
            if self._get(con, job_id) is None:
                return None
            con.execute("UPDATE jobs SET delivered = 1 WHERE id = ?", (job_id,))
            return self._must(con, job_id)

    def recent_prompts(self, user_id: str, guild_id: str | None, *, scan: int = 200) -> list[str]:
        """The prompts of the user's newest `scan` jobs there (guild None: without a server
        install), distinct, newest first."""
        rows = self._read(
            "SELECT request FROM jobs WHERE user_id = ? AND guild_id IS NOT DISTINCT FROM ?"
            " ORDER BY created_at DESC LIMIT ?",
            (user_id, guild_id, scan),
        )
        prompts = (json.loads(r["request"]).get("prompt") for r in rows)
        return list(dict.fromkeys(p for p in prompts if isinstance(p, str) and p))

    def recent_durations(self, kind: JobKind, n: int = 20) -> list[tuple[float, StoredSpec]]:
        rows = self._read(
            "SELECT finished_at - started_at AS d, spec FROM jobs WHERE kind = ? AND state = ?"
            " AND started_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
            (JobKind(kind).value, JobState.SUCCEEDED.value, n),
        )
        return [(float(r["d"]), read_spec(kind, r["spec"])) for r in rows]

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
        return [event_row(r) for r in self._read(sql + " ORDER BY id LIMIT ?", (*args, limit))]

    def last_event_id(self) -> int:
        return int(self._read("SELECT coalesce(max(id), 0) AS n FROM events")[0]["n"])

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

    def add_artifact(self, row: ArtifactRow, *, attempt: int | None = None) -> None:
        """Index an artifact; with `attempt`, only while that attempt holds its job."""
        with self._write() as con:
            if attempt is not None and row.job_id is not None:
                self._fenced(con, row.job_id, attempt)
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
        The fair order reads the current round (the newest claim's) and each waiting user's last
        round from the history, so the jobs that carry those rounds stay too (the newest claim, and
        each waiting user's last): pruning them would move the round back, or a waiting user ahead.
        """
        with self._write() as con:
            ids = [
                r["id"]
                for r in con.execute(
                    "SELECT id FROM jobs WHERE finished_at < ? AND state NOT IN (?, ?)"
                    " AND id NOT IN (SELECT job_id FROM last_images WHERE job_id IS NOT NULL)"
                    " AND id <> coalesce((SELECT id FROM jobs WHERE claim_round IS NOT NULL"
                    "                     ORDER BY claim_round DESC, seq DESC LIMIT 1), '')"
                    " AND (user_id, coalesce(claim_round, -1)) NOT IN"
                    "     (SELECT user_id, max(claim_round) FROM jobs WHERE claim_round IS NOT NULL"
                    "      AND user_id IN (SELECT user_id FROM jobs WHERE state = ?) GROUP BY user_id)"
                    " ORDER BY finished_at LIMIT ?",
                    (cutoff, *ACTIVE, JobState.QUEUED.value, limit),
                ).fetchall()
            ]
            con.executemany("DELETE FROM events WHERE job_id = ?", [(i,) for i in ids])
            con.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
            return len(ids)

    def vacuum_step(self, pages: int = VACUUM_PAGES) -> int:
        """Give up to `pages` free pages back to the file system; the free pages left. A store
        whose database reclaims space by itself (PostgreSQL's autovacuum) has nothing to do."""
        return 0

    def probe_write(self) -> bool:
        """Try one small write (health asks while the disk is full); True when it committed."""
        try:
            with self._write() as con:
                con.execute(
                    "INSERT INTO write_probe (id, at) VALUES (1, ?)"
                    " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                    (time.time(),),
                )
        except DiskFullError:
            return False
        return True

    # --- server limits ----------------------------------------------------------------------

    def guild_limits(self, guild_id: str | None) -> GuildLimits:
        with self._reading() as con:
            return self._limits(con, guild_id)

    def update_limits(self, guild_id: str, actor_id: str, changes: dict[str, Any]) -> GuildLimits:
        """Apply a partial change (validated as a whole) and log who made it, in one transaction.

        Raises pydantic.ValidationError, with nothing written, when a value is out of range.
        """
        with self._write() as con:
            self._lock_limits(con, guild_id)
            overrides = self._overrides(con, guild_id)
            updated = GuildLimits.model_validate({**self.default_limits.model_dump(), **overrides, **changes})
            now = time.time()
            applied = {k: updated.model_dump(mode="json")[k] for k in changes}
            con.execute(
                "INSERT INTO guild_limits (guild_id, limits, updated_at) VALUES (?,?,?)"
                " ON CONFLICT (guild_id) DO UPDATE SET limits = excluded.limits,"
                " updated_at = excluded.updated_at",
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
