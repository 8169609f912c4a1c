"""`SQLiteStore`: the embedded `JobStore`, one SQLite file in WAL mode.

Every write is one `BEGIN IMMEDIATE` transaction (the database-wide write lock is taken up front,
so submits and claims are serialised without further locks), committed with `synchronous=FULL`
before the API answers.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.service.scheduler import fair_slots
from engine.service.store.base import VACUUM_PAGES, DiskFullError, StoreHealth
from engine.service.store.sql import UNDELIVERED_INDEX, Connection, SqlStore, lease_columns, split_script
from spooky.contract import GuildLimits
from spooky.errors import ConfigError

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

#: Version 2: the indexes the retention sweep and the ETA estimator read on every job, and the row
#: a health check rewrites to learn whether the disk has space again.
_SCHEMA_2 = """
-- recent_durations reads the newest finished jobs of a kind after every job: an index walk, not a
-- scan of the whole history. The retention sweep finds old jobs and their artifacts the same way.
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(kind, state, finished_at);
CREATE INDEX IF NOT EXISTS jobs_done_age ON jobs(finished_at) WHERE finished_at IS NOT NULL;
-- One row rewritten by `probe_write`: whether a write fits on the disk again.
CREATE TABLE IF NOT EXISTS write_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""

#: Version 1 is the schema of the releases before the version table (PRAGMA user_version = 1).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: tuple(split_script(_SCHEMA)),
    2: tuple(split_script(_SCHEMA_2)),
    3: lease_columns("REAL"),
    4: UNDELIVERED_INDEX,
}
SCHEMA_VERSION = max(MIGRATIONS)
#: SQLite's answers to a write the file system will not take (a read-only folder or file).
_CANNOT_WRITE = {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_IOERR}


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
        except (OSError, sqlite3.Error) as e:
            raise self._unwritable(e) from e
        try:
            version = self._migrate()
        except sqlite3.Error as e:
            self._con.close()
            if getattr(e, "sqlite_errorcode", None) in _CANNOT_WRITE:
                raise self._unwritable(e) from e
            raise
        except BaseException:
            self._con.close()
            raise
        # Kept in step for tools (and older releases) that read the version from the header.
        self._con.execute(f"PRAGMA user_version={version}")

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """BEGIN IMMEDIATE takes the write lock up front (no upgrade races). A full disk
        (SQLITE_FULL) is a `DiskFullError` and marks the store's health until a write commits."""
        with self._lock:
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

    def _unwritable(self, e: OSError | sqlite3.Error) -> ConfigError:
        return ConfigError(
            f"the engine cannot open its database {self.path} for writing: {e}",
            hint=(
                f"engine.data_dir ({self.path.parent}) must be a folder the engine's user can "
                "write: it holds the SQLite file, its -wal/-shm files and the artifacts"
            ),
        )

    def _full(self, e: sqlite3.Error) -> DiskFullError:
        detail = f"disk full: the database {self.path} cannot be written ({e})"
        self.health = StoreHealth(self.health.full_since or time.time(), detail)
        return DiskFullError(detail, hint=f"free space on the disk that holds {self.path.parent}")

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

    def vacuum_step(self, pages: int = VACUUM_PAGES) -> int:
        """Give up to `pages` free pages back to the file system; the free pages left (0 when the
        file predates incremental vacuum: its pages are reused, only a full VACUUM shrinks it)."""
        with self._lock:
            if self._con.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # 2 = INCREMENTAL
                return 0
            # Each step of the pragma frees one page, and execute() takes one step: executescript
            # runs the statement to its end.
            self._con.executescript(f"PRAGMA incremental_vacuum({int(pages)})")
            return int(self._con.execute("PRAGMA freelist_count").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._con.close()
