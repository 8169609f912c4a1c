"""The engine's durable state behind one interface (`JobStore`); see base.py for the promises."""

from engine.service.store.base import (
    ACTIVE,
    MAX_ATTEMPTS,
    ArtifactRow,
    Counts,
    Decide,
    Describe,
    JobRow,
    JobStore,
    NewJob,
    QueueEntry,
    QueueSnapshot,
    Submitted,
)
from engine.service.store.sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = [
    "ACTIVE",
    "MAX_ATTEMPTS",
    "SCHEMA_VERSION",
    "ArtifactRow",
    "Counts",
    "Decide",
    "Describe",
    "JobRow",
    "JobStore",
    "NewJob",
    "QueueEntry",
    "QueueSnapshot",
    "SQLiteStore",
    "Submitted",
]
