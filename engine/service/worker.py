"""Runs one job at a time on the Renderer, in a thread, and records how it ended.

The render thread calls back after every step; the callback is where a cancel, the per-job
time-out and a shutdown drain stop the job (JobCancelled, within one step), and where progress
events and stills are written. Every outcome is stored as a result: success, cancel, time-out,
out-of-memory, full disk or any other exception fail only that job, and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import math
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from engine.pipeline.ffmpeg import VideoDiskFullError, stop_children
from engine.pipeline.image_files import load_image
from engine.pipeline.images import to_pil
from engine.pipeline.progress import StepReport
from engine.pipeline.render import Renderer
from engine.service.attempt import AttemptWriter
from engine.service.control import JobControl, StopKind
from engine.service.core import EngineCore
from engine.service.errors import BadSpecError, DatabaseUnavailableError, DiskFullError
from engine.service.lease import keep_lease
from engine.service.store import JobRow, LeaseLostError, UnreadableSpec
from engine.service.threads import run_in_daemon_thread
from spooky.contract import EventType, JobErrorCode, JobKind, JobState, SpookySpec
from spooky.errors import InputError, JobCancelled, VideoError

log = logging.getLogger(__name__)

#: How often the event loop looks at a running job's deadline and stop request.
WATCH_S = 0.5
#: After a stop (cancel, time-out, drain) the render thread gets this long to reach its next step;
#: past it, the ffmpeg it may be blocked on (one that never reads or never exits) is killed.
STOP_GRACE_S = 2.0

#: How often an outcome that met a full disk or an unavailable database is written again, and
#: how long the loop waits before claiming again while the database does not answer.
STORE_RETRY_S = 1.0

#: The stages of each kind, in order: where an error between two progress reports happened.
STAGES = {JobKind.SPOOKY: ("stylegan", "scare"), JobKind.NIGHTMARE: ("nightmare",)}


@dataclass
class Outcome:
    artifacts: dict[str, str]
    result: dict[str, Any]
    last_image: str


#: Called on the render thread after every step's progress is written: (job id, stage, step, the
#: event set once the job must stop). Given by the composition root (a test's step gate); a hook
#: that waits must return when the event is set.
StepHook = Callable[[str, str, int, threading.Event], None]


class Worker:
    """Claims jobs in fair order and runs them one at a time."""

    def __init__(self, core: EngineCore, renderer: Renderer, *, step_hook: StepHook | None = None) -> None:
        self.core = core
        self.renderer = renderer
        self.step_hook = step_hook
        self.control: JobControl | None = None
        self._current: asyncio.Future[None] | None = None
        self._pending_cancel: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._drain_now = False  # the drain's wait is over: stop whatever runs
        self._task: asyncio.Task[None] | None = None
        #: Who holds a claim, in the jobs table: host, process, and a nonce for a reused pid.
        self.nonce = uuid.uuid4().hex[:6]
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{self.nonce}"
        self.lease_s = core.settings.engine.lease_s
        #: On a database other workers share, a job may move to another worker once its lease
        #: lapses, so what this one writes outside the database waits for a confirmed lease.
        self.shared = bool(core.settings.engine.database_url)
        #: Set to renew the running job's lease now (a cancel was asked of whichever worker holds it).
        self.renew_now = asyncio.Event()

    # --- control from the event loop -------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="spooky-worker")

    def wake(self) -> None:
        self._wake.set()

    def cancel_asked(self) -> None:
        """A cancel was asked of a running job somewhere: the renewal looks at once (any thread)."""
        self.renew_now.set()

    def request_cancel(self, job_id: str, by: str) -> asyncio.Future[None] | None:
        """Stop `job_id` at its next step; the future settles when the job has ended."""
        control = self.control
        if control is not None and control.job.id == job_id:
            control.stop(StopKind.CANCEL, by)
            return self._current
        # Claimed but not started yet (or about to be claimed): honoured when it starts.
        self._pending_cancel[job_id] = by
        return None

    async def drain(self, timeout: float) -> None:
        """Stop claiming; let the running job finish for up to `timeout` s, then stop it (requeued)."""
        self._stopping = True
        self.wake()
        if self._task is None:
            return
        try:
            # The loop ends after the job in hand (if any): that is the job we wait for.
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._drain_now = True
            control = self.control
            if control is not None:
                log.info("drain: job %s still running after %.0f s; stopping it", control.job.id, timeout)
                control.stop(StopKind.DRAIN)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- the loop ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        core = self.core
        while not self._stopping:
            self._wake.clear()
            claimed_at = time.monotonic()  # the lease runs from before the claim was sent
            try:
                job = await core.db(core.store.claim_next, self.worker_id, self.lease_s)
            except DatabaseUnavailableError:
                await asyncio.sleep(STORE_RETRY_S)  # the store reported the outage
                continue
            except Exception:
                log.exception("claiming the next job failed; retrying in %g s", STORE_RETRY_S)
                await asyncio.sleep(STORE_RETRY_S)
                continue
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 5.0)
                continue
            self._current = asyncio.get_running_loop().create_future()
            try:
                await self._execute(job, claimed_at)
            except LeaseLostError as e:
                # Another worker has (or will have) this job: what this attempt did is not written.
                log.warning("job %s: lease lost; this worker wrote nothing more for it: %s", job.id, e)
                core.metrics.jobs.labels(job.kind.value, "lease_lost").inc()
            except Exception:
                # The outcome could not even be recorded (store broken?): log, keep serving.
                log.exception("recording the outcome of job %s failed", job.id)
            finally:
                self._current.set_result(None)
                self._current = None
                self.control = None
                core.running_job = None
                core.metrics.running.set(0)

    async def _execute(self, job: JobRow, claimed_at: float) -> None:
        core = self.core
        control = JobControl(
            job=job,
            deadline=time.monotonic() + core.settings.engine.job_timeout_s,
            lease_s=self.lease_s,
            lease_until=claimed_at + self.lease_s if self.shared else math.inf,
        )
        self.control = control
        core.running_job = job.id
        core.metrics.running.set(1)
        if job.id in self._pending_cancel:
            control.stop(StopKind.CANCEL, self._pending_cancel.pop(job.id))
        elif self._drain_now:
            control.stop(StopKind.DRAIN)  # claimed just as the drain ran out of time
        started = time.monotonic()
        renew = functools.partial(core.db, core.store.renew_lease, job.id, job.attempts, self.lease_s)
        renewer = asyncio.create_task(
            keep_lease(control, renew, self.renew_now), name=f"spooky-lease-{job.id}"
        )
        try:
            await self._run_and_record(job, control, started)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _run_and_record(self, job: JobRow, control: JobControl, started: float) -> None:
        core = self.core
        attempt = job.attempts
        state, event, data = JobState.FAILED, EventType.FAILED, {}
        outcome: Outcome | None = None
        error: str | None = None
        code: JobErrorCode | None = None
        oom = False
        try:
            try:
                outcome = await self._supervise(
                    run_in_daemon_thread(lambda: self._render(job, control), "spooky-render"), control
                )
            except VideoError as e:
                if control.stop_kind is None:
                    raise
                # The encoder was killed because the job was stopped: that is the stop, not a failure.
                raise JobCancelled(f"stopped: {control.stop_kind}") from e
            state, event = JobState.SUCCEEDED, EventType.FINISHED
            data = {"artifacts": outcome.artifacts, "result": outcome.result}
        except JobCancelled:
            if control.stop_kind is StopKind.LOST:
                raise LeaseLostError(f"its lease lapsed during attempt {attempt}") from None
            if control.stop_kind is StopKind.DRAIN:
                await self._until_stored(
                    lambda: core.store.requeue(
                        job.id, "the engine is shutting down; the job will run again", attempt=attempt
                    ),
                    job,
                )
                self._log(job, control, started, "requeued")
                return
            if control.stop_kind is StopKind.TIMEOUT:
                limit = core.settings.engine.job_timeout_s
                error, code = (
                    f"timed out after {limit:g} s (engine.job_timeout_s) at {self._where(control)}",
                    JobErrorCode.TIMEOUT,
                )
            else:
                state, event = JobState.CANCELLED, EventType.CANCELLED
                error, code = f"cancelled by {control.stop_by or 'the engine'}", JobErrorCode.CANCELLED
                data = {
                    "by": control.stop_by,
                    "stage": control.stage,
                    "step": control.step,
                    "requested_at": control.stop_at,
                }
        except torch.cuda.OutOfMemoryError:
            error, code = (
                f"out of GPU memory at {self._where(control)}; try fewer cutouts/smaller size",
                JobErrorCode.OOM,
            )
            log.warning("job %s: %s", job.id, error)
            oom = True
        except LeaseLostError:
            raise
        except (DiskFullError, VideoDiskFullError) as e:
            error, code = str(e), JobErrorCode.DISK_FULL
            if isinstance(e, VideoDiskFullError):  # ffmpeg's write, not ours: health must show it too
                core.files.mark_full(error)
        except InputError as e:
            error, code = str(e), JobErrorCode.of(e)
        except Exception as e:
            error, code = f"{type(e).__name__}: {e}", JobErrorCode.of(e)
            log.error("job %s failed:\n%s", job.id, "".join(traceback.format_exception(e)))
        if oom and torch.cuda.is_available():
            # Outside the except block: the exception's frames (and the tensors they hold) are gone.
            gc.collect()
            torch.cuda.empty_cache()
        if state is JobState.FAILED:
            data = {"reason": error, "code": code}
        await self._until_stored(
            lambda: core.store.finish(
                job.id,
                state,
                event,
                data,
                artifacts=outcome.artifacts if outcome else None,
                result=outcome.result if outcome else None,
                error=error,
                error_code=code,
                last_image=outcome.last_image if outcome else None,
                attempt=attempt,
            ),
            job,
        )
        outcome_name = {JobState.SUCCEEDED: "succeeded", JobState.CANCELLED: "cancelled"}.get(
            state, code or JobErrorCode.ERROR
        )
        self._log(job, control, started, outcome_name, error)
        core.metrics.jobs.labels(job.kind.value, outcome_name).inc()
        core.metrics.job_seconds.labels(job.kind.value).observe(time.monotonic() - started)
        for stage, seconds in control.stage_seconds.items():
            core.metrics.stage_seconds.labels(stage).observe(seconds)
        if state is JobState.SUCCEEDED:
            await core.refresh_estimates()

    async def _until_stored(self, write: Callable[[], Any], job: JobRow) -> None:
        """Store a job's outcome, waiting out a full disk or an unavailable database: the job must
        not stay `running` in the store after it ended. A drain stops the wait (the next start, or
        another node once the lease lapses, then requeues the job); the store fences the write, so
        an attempt whose lease lapsed meanwhile gets LeaseLostError."""
        while True:
            try:
                await self.core.db(write)
                return
            except DiskFullError:
                if self._stopping:
                    raise
                log.warning(
                    "job %s: its outcome waits for disk space; retrying in %g s", job.id, STORE_RETRY_S
                )
            except DatabaseUnavailableError:
                if self._stopping:
                    raise
                log.debug("job %s: its outcome waits for the database", job.id)  # the store reported it
            await asyncio.sleep(STORE_RETRY_S)

    @staticmethod
    async def _supervise(render: asyncio.Future[Outcome], control: JobControl) -> Outcome:
        """Wait for the render thread while enforcing the job's deadline and stop request even when
        the thread is blocked outside a step (writing to, or waiting on, ffmpeg)."""
        while True:
            done, _ = await asyncio.wait({render}, timeout=WATCH_S)
            if done:
                return render.result()
            if control.stop_kind is None and time.monotonic() > control.deadline:
                control.stop(StopKind.TIMEOUT)
            if control.stop_kind is not None and time.time() - (control.stop_at or 0) > STOP_GRACE_S:
                killed = await asyncio.to_thread(stop_children)
                if killed:
                    log.warning(
                        "job %s: stopped (%s) while blocked on ffmpeg; killed %d encoder(s)",
                        control.job.id,
                        control.stop_kind,
                        killed,
                    )

    @staticmethod
    def _where(control: JobControl) -> str:
        """The stage a failure happened in, from the last progress report."""
        stages = STAGES[control.job.kind]
        if not control.stage:
            return f"stage '{stages[0]}' (before its first step)"
        if control.step < control.total:
            return f"stage '{control.stage}' (step {control.step + 1}/{control.total})"
        later = stages[stages.index(control.stage) + 1 :] if control.stage in stages else ()
        if later:
            return f"stage '{later[0]}' (before its first step)"
        return f"the end of stage '{control.stage}' (saving the result)"

    def _log(
        self, job: JobRow, control: JobControl, started: float, outcome: str, error: str | None = None
    ) -> None:
        fields = {
            "job_id": job.id,
            "kind": job.kind.value,
            "guild_id": job.guild_id,
            "user_id": job.user_id,
            "attempt": job.attempts,
            "outcome": outcome,
            "seconds": round(time.monotonic() - started, 3),
            "stages": {k: round(v, 3) for k, v in control.stage_seconds.items()},
        }
        if error:
            fields["error"] = error
        text = " ".join(f"{k}={v}" for k, v in fields.items() if k != "stages")
        stages = ",".join(f"{k}:{v}" for k, v in fields["stages"].items())  # type: ignore[union-attr]
        log.info("job finished %s stages=%s", text, stages or "-", extra=fields)

    # --- the render thread ------------------------------------------------------------------

    def _callback(self, control: JobControl, writer: AttemptWriter) -> Callable[[StepReport], None]:
        def on_step(p: StepReport) -> None:
            control.check()  # cancel / time-out / drain / lost lease: stop before doing more work
            control.note(p.stage, p.step, p.total)
            still = to_pil(p.image, (0.0, 1.0)) if p.image is not None else None
            writer.progress(p.stage, p.step, p.total, still)
            if self.step_hook is not None:
                self.step_hook(control.job.id, p.stage, p.step, control.stopping)

        return on_step

    def _source(self, job: JobRow, writer: AttemptWriter) -> Image.Image:
        """The job's source image, read again as an upload is (type, size, pixels)."""
        source = writer.read(lambda: self.core.store.get_artifact(job.source_artifact or ""))
        if source is None:
            raise InputError(
                f"the image this job starts from ({job.source_artifact}) is gone from the engine",
                hint="attach the image again, or run /spooky again",
            )
        return load_image(self.core.files.path(source))

    def _render(self, job: JobRow, control: JobControl) -> Outcome:
        spec = job.spec
        if isinstance(spec, UnreadableSpec):
            raise BadSpecError(f"job {job.id} cannot run: {spec.reason}", hint="submit it again")
        writer = AttemptWriter(self.core.store, self.core.files, control, self.nonce)
        callback = self._callback(control, writer)
        control.check()
        # The picture the job starts from: a photo to scare, or the image a nightmare animates.
        photo = self._source(job, writer) if job.source_artifact is not None else None
        if isinstance(spec, SpookySpec):
            res = self.renderer.spooky(spec, callback, photo)
            meta = {"seed": res.seed, "settings": res.settings}
            artifacts = {}
            if res.stylegan_image is not None:
                artifacts["stylegan"] = writer.save_png(res.stylegan_image, "stylegan", meta).id
            spooky = writer.save_png(res.spooky_image, "spooky", meta)
            artifacts["spooky"] = spooky.id
            control.close_stage("save")
            return Outcome(
                artifacts=artifacts,
                result={"seed": res.seed, "settings": res.settings},
                last_image=spooky.id,
            )
        if photo is None:
            raise InputError(f"nightmare job {job.id} has no image to animate", hint="run /spooky again")
        out = writer.scratch(".mp4")
        try:
            res = self.renderer.nightmare(spec, photo, out, callback)
            control.close_stage("encode")
            w, h = res.settings.get("size", (None, None))
            video = writer.adopt(res.video_path, "video/mp4", width=w, height=h)
        finally:
            out.unlink(missing_ok=True)
        meta = {"seed": spec.seed, "settings": res.settings}
        last = writer.save_png(res.last_frame, "last_frame", meta)
        control.close_stage("save")
        return Outcome(
            artifacts={"video": video.id, "last_frame": last.id},
            result={
                "seed": spec.seed,
                "settings": res.settings,
                "frames": res.frames,
                "bytes": video.bytes,
            },
            last_image=last.id,
        )
