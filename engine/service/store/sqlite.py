"""`SQLiteStore`: the embedded `JobStore`, one SQLite file in WAL mode.

Every write is one `BEGIN IMMEDIATE` transaction (the database-wide write lock is taken up front,
so submits and claims are serialised without further locks), committed with `synchronous=FULL`
before the API answers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.service.scheduler import fair_slots
from engine.service.store.sql import Connection, SqlStore, split_script
from spooky.contract import GuildLimits

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

CREATE TABLE IF NOT EXISTS limits_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    at REAL NOT NULL,
    changes TEXT NOT NULL
);
"""

#: Version 1 is the schema of the releases before the version table (PRAGMA user_version = 1).
MIGRATIONS: dict[int, tuple[str, ...]] = {1: tuple(split_script(_SCHEMA))}
SCHEMA_VERSION = max(MIGRATIONS)


class SQLiteStore(SqlStore):
    """`JobStore` on one SQLite file (WAL). Safe to call from several threads."""

    MIGRATIONS = MIGRATIONS

    def __init__(
        self,
        path: Path,
        *,
        default_limits: GuildLimits | None = None,
        on_events: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(default_limits=default_limits, on_events=on_events)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._con.row_factory = sqlite3.Row
        self._con.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the API answers, even across a power cut.
        self._con.execute("PRAGMA synchronous=FULL")
        self._con.execute("PRAGMA foreign_keys=ON")
        try:
            version = self._migrate()
        except BaseException:
            self._con.close()
            raise
        # Kept in step for tools (and older releases) that read the version from the header.
        self._con.execute(f"PRAGMA user_version={version}")

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """BEGIN IMMEDIATE takes the write lock up front (no upgrade races)."""
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                yield self._con
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._lock:
            yield self._con

    def _pick(self, con: Connection) -> tuple[str, int] | None:
        # The write lock is already held: no other claim can run between this read and the update.
        snap = self._snapshot(con)
        if not snap.queued:
            return None
        slot, first = fair_slots(snap.queued, snap.fair)[0]
        return first.id, slot.round

    def _legacy_version(self, con: Connection) -> int:
        return int(con.execute("PRAGMA user_version").fetchone()[0])

    def _describe_location(self) -> str:
        return f"the SQLite database {self.path}"

    def close(self) -> None:
        with self._lock:
            self._con.close()
