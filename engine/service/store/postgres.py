"""`PostgresStore`: the `JobStore` several engines share, on one PostgreSQL database (psycopg 3).

The SQL is sql.py's; what this module adds is how PostgreSQL keeps the promises when the writers
are separate processes on separate hosts:

- claims take the first job in fair order (`scheduler.fair_slots` computed in SQL) with
  `FOR UPDATE SKIP LOCKED`, so a claim never waits behind an API node's write to a job row, and
  they take turns on one advisory lock: a claim holds it for about a millisecond, a job runs for
  seconds to minutes, so workers do not queue behind each other in practice. Without the turns,
  claims that commit out of order let a third claimer see claim k+1 without claim k, and the
  fair-queue round it stamps would be one too high (test_store's concurrent-claims test finds it);
- submits take a transaction-scoped advisory lock (global: `engine.max_queue` counts every
  server) and one per server (so a `/limits` change waits for the submits it affects), then
  read the counts: the limits stay exact across API nodes;
- event inserts take an advisory lock held to commit, so ids become visible in id order and a
  reader's cursor never passes an id that a slower transaction commits later.

Lock order, the same in every transaction: the claim or submit/limits locks, then job rows, then
the event lock. Nothing waits for a lock it could be holding up.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from engine.service.store.availability import Availability
from engine.service.store.base import DatabaseUnavailableError
from engine.service.store.sql import UNDELIVERED_INDEX, Connection, Cursor, SqlStore, lease_columns
from spooky.config import mask_url
from spooky.contract import GuildLimits, JobState

_SCHEMA_1 = (
    """CREATE TABLE IF NOT EXISTS jobs (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- FIFO order
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        guild_id TEXT,
        channel_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        request TEXT NOT NULL,                                 -- the JobRequest as accepted (JSON)
        spec TEXT NOT NULL,                                    -- resolved settings (JSON)
        source_artifact TEXT,
        idempotency_key TEXT UNIQUE,
        client TEXT NOT NULL DEFAULT '{}',
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        attempts INTEGER NOT NULL DEFAULT 0,
        claim_round INTEGER,                                   -- fair-queue round of its claim
        progress TEXT,
        artifacts TEXT NOT NULL DEFAULT '{}',
        result TEXT NOT NULL DEFAULT '{}',
        error TEXT,
        error_code TEXT,
        delivered INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq)",
    "CREATE INDEX IF NOT EXISTS jobs_user ON jobs(user_id, created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_guild ON jobs(guild_id, seq)",
    "CREATE INDEX IF NOT EXISTS jobs_state_guild ON jobs(state, guild_id)",
    "CREATE INDEX IF NOT EXISTS jobs_state_user ON jobs(state, user_id)",
    "CREATE INDEX IF NOT EXISTS jobs_round ON jobs(claim_round, guild_id)",
    "CREATE INDEX IF NOT EXISTS jobs_user_round ON jobs(user_id, claim_round)",
    """CREATE TABLE IF NOT EXISTS events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,    -- increasing, never reused
        job_id TEXT NOT NULL,
        type TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        guild_id TEXT,
        channel_id TEXT,
        user_id TEXT,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id)",
    "CREATE INDEX IF NOT EXISTS events_guild ON events(guild_id, id)",
    """CREATE TABLE IF NOT EXISTS artifacts (
        id TEXT PRIMARY KEY,
        media_type TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        path TEXT NOT NULL,
        job_id TEXT,
        width INTEGER,
        height INTEGER,
        created_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS artifacts_age ON artifacts(created_at)",
    """CREATE TABLE IF NOT EXISTS last_images (
        user_id TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        artifact_id TEXT NOT NULL,
        job_id TEXT,
        at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (user_id, channel_id)
    )""",
    """CREATE TABLE IF NOT EXISTS guild_limits (
        guild_id TEXT PRIMARY KEY,
        limits TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS limits_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        guild_id TEXT NOT NULL,
        actor_id TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        changes TEXT NOT NULL
    )""",
)

#: Version 2: the retention sweep's and the ETA estimator's indexes, and the health probe's row.
_SCHEMA_2 = (
    "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(kind, state, finished_at)",
    "CREATE INDEX IF NOT EXISTS jobs_done_age ON jobs(finished_at) WHERE finished_at IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, at DOUBLE PRECISION NOT NULL)",
)

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: _SCHEMA_1,
    2: _SCHEMA_2,
    3: lease_columns("DOUBLE PRECISION"),
    4: UNDELIVERED_INDEX,
}

#: `scheduler.fair_slots` in SQL. `cur` is the current round; a user's k-th waiting job is in
#: round max(their last claimed round + 1, current) + k; within the current round a server's
#: rank starts after the claims it already had in it. The outer `state` test matters: a row
#: that another transaction (a cancel) changed before this one locked it is re-checked against
#: it, not against the CTEs.
_CLAIM = f"""
WITH cur AS (SELECT coalesce(max(claim_round), 0) AS r FROM jobs),
waiting AS (
    SELECT j.seq, j.guild_id,
           greatest(coalesce(last.l + 1, 0), cur.r)
             + row_number() OVER (PARTITION BY j.user_id ORDER BY j.seq) - 1 AS rnd
    FROM jobs j CROSS JOIN cur
    -- per waiting job, from the (user_id, claim_round) index: the finished history is not scanned
    CROSS JOIN LATERAL (SELECT max(h.claim_round) AS l FROM jobs h WHERE h.user_id = j.user_id) last
    WHERE j.state = '{JobState.QUEUED.value}'),
served AS (SELECT guild_id, count(*) AS n FROM jobs, cur WHERE claim_round = cur.r GROUP BY guild_id),
ranked AS (
    SELECT w.seq, w.rnd,
           CASE WHEN w.rnd = cur.r THEN coalesce(s.n, 0) ELSE 0 END
             + row_number() OVER (PARTITION BY w.rnd, w.guild_id ORDER BY w.seq) - 1 AS srank
    FROM waiting w CROSS JOIN cur LEFT JOIN served s ON s.guild_id IS NOT DISTINCT FROM w.guild_id)
SELECT j.id, c.rnd FROM jobs j JOIN ranked c ON c.seq = j.seq
WHERE j.state = '{JobState.QUEUED.value}'
ORDER BY c.rnd, c.srank, c.seq
LIMIT 1
FOR UPDATE OF j SKIP LOCKED
"""


#: After a failed connect, calls fail at once for this long instead of each trying again: a render
#: thread reporting progress, or a burst of API requests, never waits on a server that is down.
RECONNECT_PAUSE_S = 0.5


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    # The shared SQL has no literal '?' or '%': each '?' is a parameter.
    return sql.replace("?", "%s")


class _PgConnection:
    """A psycopg connection behind the `?`-placeholder interface sql.py is written against."""

    def __init__(self, con: psycopg.Connection[Any]) -> None:
        self.con = con

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        return self.con.execute(_pg_sql(sql), tuple(args))  # type: ignore[return-value]

    def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> Any:
        with self.con.cursor() as cur:
            cur.executemany(_pg_sql(sql), args)


def _lock_key(con: Connection, name: str) -> None:
    con.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (name,))


class PostgresStore(SqlStore):
    """`JobStore` on a PostgreSQL database that several engines may share."""

    MIGRATIONS = MIGRATIONS

    def __init__(
        self,
        url: str,
        *,
        default_limits: GuildLimits | None = None,
        on_events: Callable[[int], None] | None = None,
        connect_timeout_s: float = 10,
    ) -> None:
        super().__init__(default_limits=default_limits, on_events=on_events)
        self.url = url
        self._connect_timeout = max(1, round(connect_timeout_s))
        #: Shared with the node's listener (store/notify.py): one view of the database per node.
        self.availability = Availability(f"PostgreSQL at {mask_url(url)}")
        self._retry_at = 0.0
        self._connect()
        try:
            self._migrate()
        except BaseException:
            self._raw.close()
            raise

    def _connect(self) -> None:
        epoch = self.availability.epoch
        try:
            con = psycopg.connect(
                self.url, autocommit=True, row_factory=dict_row, connect_timeout=self._connect_timeout
            )
        except psycopg.OperationalError as e:
            self._retry_at = time.monotonic() + RECONNECT_PAUSE_S
            self.availability.failed(e)
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL at {mask_url(self.url)}: {e}",
                hint="check [engine] database_url (or SPOOKY_DATABASE_URL) and that the server is up",
            ) from e
        self._raw = con
        self._db = _PgConnection(con)
        self._epoch = epoch

    def _reconnect(self) -> None:
        self._raw.close()
        if time.monotonic() < self._retry_at:
            error = DatabaseUnavailableError(
                f"PostgreSQL at {mask_url(self.url)} refused the last connection moments ago",
                hint="retry shortly; the store reconnects on a later call",
            )
            self.availability.failed(error)
            raise error
        self._connect()

    @contextmanager
    def _session(self) -> Iterator[None]:
        """Hold the connection; reopen it first when it broke, or when it may have: another of this
        node's connections found the server gone since this one was opened (a restart ends every
        connection, and psycopg only notices on the next statement)."""
        with self._lock:
            if self._raw.closed or self._raw.broken or self._epoch != self.availability.epoch:
                self._reconnect()
            try:
                yield
            except psycopg.OperationalError as e:
                self.availability.failed(e)
                # The next call reconnects; this one's outcome is for the caller to decide.
                raise DatabaseUnavailableError(
                    f"PostgreSQL at {mask_url(self.url)} stopped answering: {e}",
                    hint="retry shortly; the store reconnects on the next call",
                ) from e
            self.availability.answered()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        # synchronous_commit is on by default: COMMIT returns once the WAL is flushed.
        with self._session(), self._raw.transaction():
            yield self._db

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        # One snapshot for all the statements (a queue snapshot reads several tables).
        with self._session(), self._raw.transaction():
            self._db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield self._db

    def _pick(self, con: Connection) -> tuple[str, int] | None:
        _lock_key(con, "spooky:claim")
        # READ COMMITTED: this statement's snapshot is taken after the lock, so it sees the
        # previous claim committed.
        row = con.execute(_CLAIM).fetchone()
        return (row["id"], int(row["rnd"])) if row else None

    def _lock_submits(self, con: Connection, guild_ids: Sequence[str | None]) -> None:
        _lock_key(con, "spooky:submit")
        for guild_id in sorted({g for g in guild_ids if g is not None}):
            _lock_key(con, f"spooky:guild:{guild_id}")

    def _lock_limits(self, con: Connection, guild_id: str) -> None:
        _lock_key(con, f"spooky:guild:{guild_id}")

    def _lock_job(self, con: Connection, job_id: str) -> None:
        con.execute("SELECT 1 FROM jobs WHERE id = ? FOR UPDATE", (job_id,))

    def _notify(self, con: Connection, channel: str, payload: str) -> None:
        # Delivered at commit, and only if it commits: a listener never hears of a rolled-back row.
        con.execute("SELECT pg_notify(?, ?)", (channel, payload))

    def _lock_events(self, con: Connection) -> None:
        _lock_key(con, "spooky:events")

    def try_lead(self, name: str) -> bool:
        # Session-level: a node that dies (or whose connection breaks) gives its turn back.
        with self._session():
            row = self._db.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(?, 0)) AS mine", (f"spooky:lead:{name}",)
            ).fetchone()
        return bool(row["mine"])

    def release_lead(self, name: str) -> None:
        with self._session():
            self._db.execute("SELECT pg_advisory_unlock(hashtextextended(?, 0))", (f"spooky:lead:{name}",))

    def _migrate(self) -> int:
        # Engines starting together must not both create the tables: one migrates, the others wait.
        with self._session(), self._raw.transaction():
            _lock_key(self._db, "spooky:schema")
            return super()._migrate()

    def _describe_location(self) -> str:
        return f"the PostgreSQL database {mask_url(self.url)}"

    def close(self) -> None:
        with self._lock:
            self._raw.close()
