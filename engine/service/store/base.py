"""The engine's durable state behind one interface: jobs, events, artifacts index, last images, limits.

`JobStore` is what the service codes against. Two real implementations share their SQL and row
mapping (sql.py): `SQLiteStore`, the embedded default (one file in data_dir), and `PostgresStore`,
one database that several engines share (`[engine] database_url`). Both promise:

- a job is durable (committed, fsync'd) before the API acknowledges it;
- claims follow `scheduler.fair_slots` (round-robin by user, then by server, then FIFO), and no job
  is claimed twice, however many claimers;
- limits are exact under concurrent submits: counts are read and the job inserted in one
  transaction that no other submit interleaves with;
- idempotency keys are unique; `/limits` changes are logged with who made them; the last image
  per (user, channel) is kept;
- event ids increase and become visible in id order, so `events_after(cursor)` never skips one;
- the schema carries a version (table `schema_version`), migrated forward at open; a database
  written by a newer version is refused (`SchemaTooNewError`) instead of being misread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.service.scheduler import FairState
from engine.service.spec import StoredSpec
from engine.service.store.availability import Availability
from spooky.contract import (
    Event,
    EventType,
    GuildLimits,
    JobErrorCode,
    JobKind,
    JobRequest,
    JobSpec,
    JobState,
    JobView,
    LastImage,
    LimitsChange,
    Progress,
    Refusal,
)
from spooky.errors import SpookyError


class SchemaTooNewError(SpookyError):
    """The database was written by a newer SpookyGAN; reading it could misread or damage it."""

    code = "schema_too_new"


class DatabaseUnavailableError(SpookyError):
    """The database server cannot be reached (down, restarting, network cut); retry later.

    A write interrupted this way may or may not have been committed: a retry of a submit is
    only safe with its idempotency key.
    """

    code = "database_unavailable"


class LeaseLostError(SpookyError):
    """A worker wrote for a job attempt it no longer holds (its lease lapsed and the job moved on);
    nothing was written. The worker stops that job and writes nothing more for it."""

    code = "lease_lost"


@dataclass(frozen=True)
class Lease:
    """What a renewal found: whether this attempt still holds the job, and a cancel asked of it."""

    held: bool
    cancel_by: str | None = None


ACTIVE = (JobState.QUEUED.value, JobState.RUNNING.value)
#: Free pages given back to the file system after each retention batch (4 KiB each; SQLite).
VACUUM_PAGES = 200


class DiskFullError(SpookyError):
    """No space left for the database or the artifacts; fails a job or a request, not the engine."""

    code = "disk_full"


@dataclass
class StoreHealth:
    """The last write that failed for lack of space; cleared by the next write that commits."""

    full_since: float | None = None
    detail: str | None = None


#: A job whose attempt ended without an outcome this many times (the engine or its worker died, or
#: its lease lapsed) fails instead of running again: once is bad luck, twice is likely the job itself.
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
    spec: StoredSpec
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
    error_code: JobErrorCode | None
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
    spec: JobSpec
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
    spec: StoredSpec
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
    availability: Availability | None  # a database server's reachability (None: an embedded file)

    def submit(self, new: NewJob, decide: Decide, describe: Describe) -> Submitted: ...
    def submit_many(self, batch: list[tuple[NewJob, Decide]], describe: Describe) -> list[Submitted]: ...
    def find_idempotent(self, key: str) -> JobRow | None: ...
    def claim_next(self, worker: str = ..., lease_s: float | None = ...) -> JobRow | None: ...
    def renew_lease(self, job_id: str, attempt: int, lease_s: float) -> Lease: ...
    def request_cancel(self, job_id: str, by: str) -> bool: ...
    def get_job(self, job_id: str) -> JobRow | None: ...
    def get_jobs(self, job_ids: list[str]) -> list[JobRow]: ...
    def list_jobs(
        self,
        *,
        guild_id: str | None = None,
        user_id: str | None = None,
        state: JobState | None = None,
        undelivered: bool = False,
        shards: tuple[int, list[int]] | None = None,
        limit: int = 100,
    ) -> list[JobRow]: ...
    def queue_snapshot(self) -> QueueSnapshot: ...
    def queue_length(self) -> int: ...
    def record_progress(
        self, job_id: str, progress: dict[str, Any], still: str | None, *, attempt: int | None = ...
    ) -> Event: ...
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
    ) -> Event: ...
    def cancel_queued(self, job_id: str, by: str) -> Event | None: ...
    def requeue(self, job_id: str, reason: str, *, attempt: int | None = ...) -> Event: ...
    def recover_interrupted(self, max_attempts: int, *, lapsed_only: bool = ...) -> list[Event]: ...
    def set_client(self, job_id: str, client: dict[str, str]) -> JobRow | None: ...
    def mark_delivered(self, job_id: str) -> JobRow | None: ...
    def events_after(
        self, after: int, *, job_id: str | None = None, guild_id: str | None = None, limit: int = 500
    ) -> list[Event]: ...
    def last_event_id(self) -> int: ...
    def add_artifact(self, row: ArtifactRow, *, attempt: int | None = ...) -> None: ...
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
    def recent_durations(self, kind: JobKind, n: int = 20) -> list[tuple[float, StoredSpec]]: ...
    def recent_prompts(self, user_id: str, guild_id: str | None, *, scan: int = ...) -> list[str]: ...
    def try_lead(self, name: str) -> bool: ...
    def release_lead(self, name: str) -> None: ...
    def close(self) -> None: ...
