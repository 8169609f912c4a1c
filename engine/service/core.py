"""What the API does, without HTTP: submit, views, cancel, uploads, artifacts, limits.

All store calls run on one executor thread so the event loop never waits on SQLite's fsync.
Errors the API turns into 4xx answers are `ApiError`s (status, code) or `Refused` (a `Refusal`),
both in `engine.service.errors`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from engine.service.admission import JobRules, Snapshot, check_job, check_limits
from engine.service.artifacts import ArtifactFiles, new_id
from engine.service.errors import ApiError, Refused
from engine.service.events import EventHub
from engine.service.link import WorkerControl
from engine.service.metrics import Metrics
from engine.service.scheduler import (
    Estimator,
    Placement,
    plan,
    seconds_per_unit,
    step_cost,
    work_units,
)
from engine.service.spec import resolve
from engine.service.store import (
    ArtifactRow,
    Counts,
    DatabaseUnavailableError,
    Decide,
    JobRow,
    JobStore,
    NewJob,
    QueueEntry,
    QueueSnapshot,
    Submitted,
)
from spooky.bounds import MAX_ECHOED_INPUT_CHARS, MAX_ERROR_CHARS, MAX_ERROR_DETAILS
from spooky.config import LimitsConfig, Settings
from spooky.contract import (
    Artifact,
    CancelRequest,
    Event,
    GuildLimits,
    Health,
    HealthStatus,
    JobKind,
    JobRequest,
    JobState,
    JobView,
    LastImage,
    LimitsChange,
    PromptList,
    QueueView,
    Refusal,
    RefusalCode,
    SubmitResponse,
)
from spooky.errors import InputError, SpookyError

log = logging.getLogger(__name__)
R = TypeVar("R")

#: Rows each retention step deletes in one transaction (small: the store thread stays responsive).
SWEEP_BATCH = 200
#: A file without a row is a leftover once it is this old (a row follows its file within seconds).
STRAY_AGE_S = 3600.0
#: How long a cancel of a running job waits for the stage to stop before answering.
CANCEL_WAIT_S = 10.0


def default_limits(cfg: LimitsConfig) -> GuildLimits:
    return GuildLimits(**cfg.model_dump())


class GroupCommit:
    """Submits that arrive while a write is in progress go to the store together: one
    transaction and one fsync for the lot, judged one after another inside it."""

    MAX_BATCH = 256

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self._pending: list[tuple[NewJob, Decide, asyncio.Future[Submitted]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, new: NewJob, decide: Decide) -> Submitted:
        future: asyncio.Future[Submitted] = asyncio.get_running_loop().create_future()
        self._pending.append((new, decide, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="spooky-submits")
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
            core = self.core
            try:
                results = await core.db(core.store.submit_many, [(n, d) for n, d, _ in batch], core._describe)
            except Exception as e:  # nothing was written: every submit of the batch gets the error
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (*_, future), result in zip(batch, results, strict=True):
                if not future.done():  # the caller may have gone; the job is stored all the same
                    future.set_result(result)


class EngineCore:
    """The engine's state and operations; `EngineService` wires it to HTTP, the worker and signals.

    `worker` wakes and stops the worker (it reaches the real one once the models are loaded:
    `engine.service.link.WorkerLink`); `rules` are what a job must suit (engine.service.admission).
    """

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        files: ArtifactFiles,
        hub: EventHub,
        *,
        worker: WorkerControl,
        rules: JobRules,
    ) -> None:
        self.settings = settings
        self.store = store
        self.files = files
        self.hub = hub
        self.worker = worker
        self.rules = rules
        self.metrics = Metrics()
        if store.availability is not None:
            self.metrics.watch_database(store.availability)
        self.status = HealthStatus.LOADING
        self.detail: str | None = None
        self.preset: str | None = settings.models.preset
        self.device: str | None = None
        self.running_job: str | None = None
        #: Set when the engine stops: event streams end.
        self.closing = asyncio.Event()
        self.estimator = self._estimator({})
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spooky-db")
        self._submits = GroupCommit(self)

    async def db(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run a store call on the store thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._db.shutdown(wait=True)

    # --- views ------------------------------------------------------------------------------

    async def refresh_estimates(self) -> None:
        """Recompute seconds per step of each kind from the last finished jobs."""
        samples = {}
        for kind in JobKind:
            rows = await self.db(self.store.recent_durations, kind)
            samples[kind] = [(d, work_units(spec)) for d, spec in rows]
        self.estimator = self._estimator(samples)

    def _estimator(self, samples: dict[JobKind, list[tuple[float, int]]]) -> Estimator:
        """Rates from `samples`, seeded with the step cost measured for this preset and device, so
        the first ETAs are not a GPU guess on a CPU (or the other way round)."""
        cost = step_cost(self.preset, self.device)
        rates = {k: seconds_per_unit(k, samples.get(k, []), cost) for k in JobKind}
        return Estimator(rates, cost.overhead_s)

    async def _plan(self) -> tuple[list[QueueEntry], list[QueueEntry], dict[str, Placement], float]:
        """(queued in run order, running, placement by job id, ETA of the whole queue)."""
        snap = await self.db(self.store.queue_snapshot)
        order, places, total = plan(snap.queued, snap.running, snap.fair, self.estimator, time.time())
        return order, snap.running, places, total

    def _describe(self, snap: QueueSnapshot) -> dict[str, dict[str, Any]]:
        """QUEUED event data of every waiting job: its position and ETA."""
        _, places, _ = plan(snap.queued, snap.running, snap.fair, self.estimator, time.time())
        return {job_id: {"position": p.position, "eta_s": p.eta_s} for job_id, p in places.items()}

    async def view(self, job: JobRow) -> JobView:
        if job.state is JobState.QUEUED:
            _, _, places, _ = await self._plan()
            place = places.get(job.id)
            if place is not None:
                return job.view(place.position, place.eta_s)
        if job.state is JobState.RUNNING:
            elapsed = time.time() - (job.started_at or time.time())
            return job.view(None, round(max(self.estimator.duration(job.spec) - elapsed, 1.0), 1))
        return job.view()

    async def job(self, job_id: str) -> JobView:
        return await self.view(await self._job(job_id))

    async def _job(self, job_id: str) -> JobRow:
        job = await self.db(self.store.get_job, job_id)
        if job is None:
            raise ApiError(
                404, "not_found", f"no job with id {_shown(job_id)}; it never existed or was deleted"
            )
        return job

    async def jobs(self, **filters: Any) -> list[JobView]:
        rows = await self.db(functools.partial(self.store.list_jobs, **filters))
        if not any(r.state is JobState.QUEUED for r in rows):
            return [r.view() for r in rows]
        _, _, places, _ = await self._plan()
        return [
            r.view(places[r.id].position, places[r.id].eta_s) if r.id in places else r.view() for r in rows
        ]

    async def queue(self, guild_id: str | None = None, user_id: str | None = None) -> QueueView:
        order, running, places, total = await self._plan()
        mine = [
            j
            for j in [*running, *order]
            if (guild_id is None or j.guild_id == guild_id) and (user_id is None or j.user_id == user_id)
        ]
        rows = await self.db(self.store.get_jobs, [j.id for j in mine])
        views = []
        for row in rows:
            place = places.get(row.id)
            views.append(row.view(place.position, place.eta_s) if place else await self.view(row))
        running_row = await self.db(self.store.get_job, running[0].id) if running else None
        return QueueView(
            length=len(order),
            running=await self.view(running_row) if running_row else None,
            jobs=views,
            eta_s=total if (order or running) else 0.0,
        )

    async def health(self) -> Health:
        status = HealthStatus.DRAINING if self.status is HealthStatus.STOPPED else self.status
        if self.store.health.full_since is not None:
            # Nothing else may write while the disk is full: a probe notices the space coming back.
            await self.db(self.store.probe_write)
        if self.files.disk.full_since is not None:
            await asyncio.to_thread(self.files.probe)
        full = self.store.health.detail or self.files.disk.detail
        try:
            queue_length = await self.db(self.store.queue_length)
        except DatabaseUnavailableError as e:
            full, queue_length = str(e), 0  # the database is down: degraded until it answers again
        if full and status in (HealthStatus.LOADING, HealthStatus.READY):
            status = HealthStatus.DEGRADED
        detail = full or self.detail
        return Health(
            status=status,
            preset=self.preset,
            device=self.device,
            queue_length=queue_length,
            running_job=self.running_job,
            detail=detail,
        )

    # --- submit -----------------------------------------------------------------------------

    async def submit(self, req: JobRequest) -> SubmitResponse:
        """Validate, check the limits and queue, atomically; never waits for the GPU."""
        started = time.perf_counter()
        try:
            response = await self._submit(req)
        except Refused as e:
            self.metrics.submits.labels(e.refusal.code.value).inc()
            raise
        finally:
            self.metrics.submit_seconds.observe(time.perf_counter() - started)
        self.metrics.submits.labels("duplicate" if response.duplicate else "accepted").inc()
        return response

    async def _submit(self, req: JobRequest) -> SubmitResponse:
        if req.idempotency_key:
            existing = await self.db(self.store.find_idempotent, req.idempotency_key)
            if existing is not None:
                return SubmitResponse(job=await self.view(existing), duplicate=True)
        if self.status not in (HealthStatus.LOADING, HealthStatus.READY):
            why = "shutting down" if self.status is HealthStatus.DRAINING else f"not working ({self.detail})"
            raise Refused(
                Refusal(
                    code=RefusalCode.NOT_READY,
                    message=f"the render engine is {why}; try again in a minute",
                    retry_after_s=30.0,
                )
            )
        who = req.requester
        limits = await self.db(self.store.guild_limits, who.guild_id)
        spec = resolve(req, self.settings.pipeline, limits)
        try:
            await asyncio.to_thread(check_job, spec, self.rules)  # the first call reads CLIP's vocabulary
        except InputError as e:
            raise Refused.for_input(e) from e
        source, picture = await self._source(req)
        max_queue = self.settings.engine.max_queue
        now = time.time()

        def decide(counts: Counts, limits: GuildLimits) -> Refusal | None:
            snap = Snapshot(now=now, limits=limits, max_queue=max_queue, **vars(counts))
            return check_limits(req, spec, snap, picture=picture)

        new = NewJob(id=new_id(), request=req, spec=spec, source_artifact=source, created_at=now)
        result = await self._submits.submit(new, decide)
        if result.refusal is not None:
            log.info(
                "submit refused: %s user=%s guild=%s",
                result.refusal.code.value,
                who.user_id,
                who.guild_id,
                extra={
                    "refusal": result.refusal.code.value,
                    "user_id": who.user_id,
                    "guild_id": who.guild_id,
                },
            )
            raise Refused(result.refusal)
        assert result.job is not None
        if result.duplicate:  # the same key raced us into the transaction
            return SubmitResponse(job=await self.view(result.job), duplicate=True)
        self.worker.wake()
        # The QUEUED event already holds the position and ETA, planned inside the insert's transaction.
        data = result.event.data if result.event else {}
        return SubmitResponse(job=result.job.view(data.get("position"), data.get("eta_s")))

    async def _source(self, req: JobRequest) -> tuple[str | None, bool]:
        """The job's source image (the picture it starts from; a nightmare without one animates the
        user's last image in the channel), and whether it is a member's own picture (an upload,
        not a render's artifact)."""
        if req.init_artifact is not None:
            row = await self.db(self.store.get_artifact, req.init_artifact)
            if row is None or not row.media_type.startswith("image/"):
                raise Refused(
                    Refusal(
                        code=RefusalCode.BAD_IMAGE,
                        message=(
                            f"there is no image {req.init_artifact!r} on the engine (images are kept "
                            f"{self.settings.engine.artifact_retention_hours:g} h); attach the image again"
                        ),
                    )
                )
            return row.id, row.job_id is None
        if JobKind(req.kind) is not JobKind.NIGHTMARE:
            return None, False
        last = await self.db(self.store.last_image, req.requester.user_id, req.requester.channel_id)
        if last is None:
            raise Refused(
                Refusal(
                    code=RefusalCode.NO_PREVIOUS_IMAGE,
                    message=(
                        "you have no image in this channel to animate yet: run /spooky first, "
                        "or attach an image to /nightmare"
                    ),
                )
            )
        return last.artifact_id, False

    # --- cancel and bookkeeping -------------------------------------------------------------

    async def cancel(self, job_id: str, req: CancelRequest) -> JobView:
        job = await self._job(job_id)
        if req.actor_id != job.user_id and not req.is_moderator:
            raise ApiError(403, "forbidden", "only the job's owner or a moderator can cancel it")
        if job.state.terminal:
            raise ApiError(409, "finished", f"job {job_id} has already {job.state.value}; nothing to cancel")
        by = req.actor_id
        if job.state is JobState.QUEUED:
            event = await self.db(self.store.cancel_queued, job_id, by)
            if event is not None:
                self.metrics.jobs.labels(job.kind.value, "cancelled").inc()
                return await self.job(job_id)
        # Running (or claimed between our read and the cancel): stop it at the next step, here or
        # on whichever worker holds it (it sees the request through its lease).
        done = self.worker.request_cancel(job_id, by)
        if done is None:
            await self.db(self.store.request_cancel, job_id, by)
        deadline = time.monotonic() + CANCEL_WAIT_S
        try:
            if done is not None:
                await asyncio.wait_for(asyncio.shield(done), CANCEL_WAIT_S)
            else:  # on another worker, or claimed but not started here: it stops at its next step
                while not (await self._job(job_id)).state.terminal and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            log.warning("job %s did not stop within %.0f s of its cancel", job_id, CANCEL_WAIT_S)
        return await self.job(job_id)

    async def set_client(self, job_id: str, client: dict[str, str]) -> JobView:
        try:
            job = await self.db(self.store.set_client, job_id, client)
        except ValueError as e:
            raise ApiError(422, "invalid_request", str(e)) from e
        if job is None:
            raise ApiError(404, "not_found", f"no job with id {_shown(job_id)}")
        return await self.view(job)

    async def mark_delivered(self, job_id: str) -> JobView:
        job = await self.db(self.store.mark_delivered, job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job with id {_shown(job_id)}")
        return await self.view(job)

    async def events_after(self, after: int, job_id: str | None, guild_id: str | None) -> list[Event]:
        return await self.db(self.store.events_after, after, job_id=job_id, guild_id=guild_id)

    # --- artifacts --------------------------------------------------------------------------

    async def upload(self, data: bytes, user_id: str, channel_id: str) -> Artifact:
        """Check an uploaded image (not an image, too large, bomb: BAD_IMAGE) and keep it as a PNG."""
        from engine.pipeline.image_files import load_image, png_bytes  # PIL: not needed before

        def convert() -> tuple[bytes, int, int]:
            image = load_image(data)
            return png_bytes(
                image, {"source": "upload", "user_id": user_id, "channel_id": channel_id}
            ), *image.size

        try:
            png, width, height = await asyncio.to_thread(convert)
        except SpookyError as e:
            raise Refused(Refusal(code=RefusalCode.BAD_IMAGE, message=str(e))) from e
        row = await asyncio.to_thread(self.files.write, png, "image/png", width=width, height=height)
        await self.db(self.store.add_artifact, row)
        return artifact_view(row)

    async def artifact(self, artifact_id: str) -> tuple[ArtifactRow, bytes]:
        row = await self.db(self.store.get_artifact, artifact_id)
        if row is None:
            raise ApiError(
                404, "not_found", f"no artifact {_shown(artifact_id)}; it never existed or has expired"
            )
        try:
            data = await asyncio.to_thread(self.files.read, row)
        except FileNotFoundError as e:
            raise ApiError(404, "not_found", f"the file of artifact {_shown(artifact_id)} is gone") from e
        return row, data

    async def fit_video(self, artifact_id: str, max_bytes: int) -> Artifact:
        """A copy of an MP4 re-encoded under `max_bytes` (the artifact itself when it already fits)."""
        from engine.pipeline.video_budget import fit_to_budget
        from engine.pipeline.video_probe import probe

        row, data = await self.artifact(artifact_id)
        if row.media_type != "video/mp4":
            raise ApiError(
                422, "not_a_video", f"artifact {_shown(artifact_id)} is {row.media_type}, not an MP4"
            )
        if row.bytes <= max_bytes:
            return artifact_view(row)
        tmp = self.files.temp_path(f"fit-{new_id()}.mp4")

        def fit() -> ArtifactRow:
            tmp.write_bytes(data)
            try:
                fit_to_budget(tmp, max_bytes)
                info = probe(tmp)
                return self.files.adopt(
                    tmp, "video/mp4", job_id=row.job_id, width=info.width, height=info.height
                )
            finally:
                tmp.unlink(missing_ok=True)

        try:
            new = await asyncio.to_thread(fit)
        except SpookyError as e:
            raise ApiError(422, e.code, str(e)) from e
        await self.db(self.store.add_artifact, new)
        return artifact_view(new)

    async def recent_prompts(self, user_id: str, guild_id: str | None, query: str, limit: int) -> PromptList:
        """The user's own recent prompts there that contain `query` (case-insensitive)."""
        found = await self.db(self.store.recent_prompts, user_id, guild_id)
        wanted = query.casefold()
        return PromptList(prompts=[p for p in found if wanted in p.casefold()][:limit])

    async def last_image(self, user_id: str, channel_id: str) -> LastImage:
        last = await self.db(self.store.last_image, user_id, channel_id)
        if last is None:
            raise ApiError(404, "not_found", "no image of this user in this channel yet")
        return last

    async def sweep(self) -> int:
        """Delete artifacts, events and finished jobs past the retention limit, and files that
        have no row; the number of artifacts deleted. Last images and inputs of waiting jobs stay.

        Every store call handles one small batch and is followed by a rest as long as it took, so
        a backlog never holds the store thread for long: health and submits get their turn between
        batches, and the sweep takes at most half of the store's time.
        """
        hours = self.settings.engine.artifact_retention_hours
        cutoff = time.time() - hours * 3600
        started = time.monotonic()
        deleted = 0
        step = self._sweep_step
        while expired := await step(self.store.expired_artifacts, cutoff, SWEEP_BATCH):
            # Index first: a row without its file would be served as a broken artifact.
            await step(self.store.delete_artifacts, [r.id for r in expired])
            await asyncio.to_thread(self.files.delete, expired)
            deleted += len(expired)
        while await step(self.store.prune_events, cutoff, SWEEP_BATCH * 10) > 0:
            pass
        pruned = 0
        while n := await step(self.store.prune_jobs, cutoff, SWEEP_BATCH):
            pruned += n
        # A kill between a file's move into place and its row leaves a file nobody indexes.
        stray = await asyncio.to_thread(self.files.stray_files, self._known_artifacts, STRAY_AGE_S)
        for path in stray:
            path.unlink(missing_ok=True)
        while await step(self.store.vacuum_step) > 0:
            pass
        if deleted or pruned or stray:
            log.info(
                "retention: deleted %d artifact(s) and %d job(s) older than %g h, %d file(s) without a row,"
                " in %.1f s",
                deleted,
                pruned,
                hours,
                len(stray),
                time.monotonic() - started,
            )
        return deleted

    async def _sweep_step(self, call: Callable[..., R], *args: Any) -> R:
        """One batch of the sweep on the store thread, then a rest as long as it took."""
        started = time.perf_counter()
        result = await self.db(call, *args)
        await asyncio.sleep(time.perf_counter() - started)
        return result

    def _known_artifacts(self, ids: list[str]) -> set[str]:
        """For the file sweep (on its own thread): which ids have a row, asked on the store thread."""
        return self._db.submit(self.store.known_artifacts, ids).result()

    # --- limits -----------------------------------------------------------------------------

    async def limits(self, guild_id: str | None) -> GuildLimits:
        """A server's limits; None: those without a server install (the operator's defaults)."""
        return await self.db(self.store.guild_limits, guild_id)

    async def update_limits(self, guild_id: str, actor_id: str, changes: dict[str, Any]) -> GuildLimits:
        from pydantic import ValidationError

        try:
            # Strict types at the edge: "yes" is not a boolean, "5" is not a number of steps.
            GuildLimits.model_validate({**GuildLimits().model_dump(), **changes}, strict=True)
            updated = await self.db(self.store.update_limits, guild_id, actor_id, changes)
        except ValidationError as e:
            raise ApiError(422, "invalid_limits", "a limit is out of range", validation_details(e)) from e
        log.info(
            "limits of guild %s changed by %s: %s",
            guild_id,
            actor_id,
            changes,
            extra={"guild_id": guild_id, "actor_id": actor_id, "changes": changes},
        )
        return updated

    async def limits_log(self, guild_id: str) -> list[LimitsChange]:
        return await self.db(self.store.limits_log, guild_id)


def _shown(value: str) -> str:
    """An id from the request's path, quoted for a message and cut short (paths may be 8 KB long)."""
    return repr(value[:MAX_ECHOED_INPUT_CHARS]) + ("…" if len(value) > MAX_ECHOED_INPUT_CHARS else "")


def artifact_view(row: ArtifactRow) -> Artifact:
    return Artifact(
        id=row.id,
        media_type=row.media_type,
        bytes=row.bytes,
        job_id=row.job_id,
        width=row.width,
        height=row.height,
    )


def validation_details(e: Any) -> list[dict[str, Any]]:
    """The first pydantic errors as short plain JSON: never the whole input, so a 12 MiB prompt or
    thousands of unknown fields give an answer of a few kilobytes."""
    details = []
    for err in e.errors(include_url=False, include_context=False)[:MAX_ERROR_DETAILS]:
        detail: dict[str, Any] = {
            "type": err["type"],
            "loc": [p if isinstance(p, int) else str(p)[:MAX_ECHOED_INPUT_CHARS] for p in err["loc"]],
            "msg": err["msg"][:MAX_ERROR_CHARS],
        }
        given = err.get("input")
        if isinstance(given, str | int | float) and len(repr(given)) <= MAX_ECHOED_INPUT_CHARS:
            detail["input"] = given
        details.append(detail)
    if e.error_count() > MAX_ERROR_DETAILS:
        details.append({"type": "truncated", "loc": [], "msg": f"{e.error_count()} errors in all"})
    return details
