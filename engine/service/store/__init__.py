"""The engine's durable state behind one interface (`JobStore`); see base.py for the promises."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.service.spec import StoredSpec, UnreadableSpec
from engine.service.store.base import (
    ACTIVE,
    MAX_ATTEMPTS,
    ArtifactRow,
    Counts,
    DatabaseUnavailableError,
    Decide,
    Describe,
    DiskFullError,
    JobRow,
    JobStore,
    Lease,
    LeaseLostError,
    NewJob,
    QueueEntry,
    QueueSnapshot,
    SchemaTooNewError,
    StoreHealth,
    Submitted,
)
from engine.service.store.sqlite import SCHEMA_VERSION, SQLiteStore
from spooky.contract import GuildLimits
from spooky.errors import ConfigError

__all__ = [
    "ACTIVE",
    "MAX_ATTEMPTS",
    "SCHEMA_VERSION",
    "ArtifactRow",
    "Counts",
    "DatabaseUnavailableError",
    "Decide",
    "Describe",
    "DiskFullError",
    "JobRow",
    "JobStore",
    "Lease",
    "LeaseLostError",
    "NewJob",
    "QueueEntry",
    "QueueSnapshot",
    "SQLiteStore",
    "SchemaTooNewError",
    "StoreHealth",
    "StoredSpec",
    "Submitted",
    "UnreadableSpec",
    "open_store",
]


def open_store(
    database_url: str,
    sqlite_path: Path,
    *,
    default_limits: GuildLimits | None = None,
    on_events: Callable[[int], None] | None = None,
) -> JobStore:
    """PostgreSQL when `database_url` is set (`[engine] database_url`), else the SQLite file."""
    if not database_url:
        return SQLiteStore(sqlite_path, default_limits=default_limits, on_events=on_events)
    try:
        # Only here: the SQLite-only install has no psycopg.
        from engine.service.store.postgres import PostgresStore
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("psycopg"):
            raise
        raise ConfigError(
            "[engine] database_url names PostgreSQL but psycopg is not installed",
            hint="install the `postgres` extra: pip install 'spookygan[postgres]'",
        ) from e
    return PostgresStore(database_url, default_limits=default_limits, on_events=on_events)
