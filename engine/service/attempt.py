"""What one attempt of a job writes while it renders (from the render thread): progress, stills,
result files. Its outcome is the worker's to record.

Every write is fenced twice. In the database by (job id, attempt): a row or event of an attempt
that no longer holds the job is refused (`LeaseLostError`). Outside it by the lease as this worker
knows it (`JobControl.lease_fresh`): nothing is written into the shared artifacts folder unless a
renewal confirmed the lease less than `lease_s` ago, and a file whose row is then refused is
removed again. Scratch files are named per attempt, so a stale attempt never touches the live
one's. A worker that was paused past its lease therefore leaves nothing behind for that attempt.

A database that does not answer costs progress, not the job: progress and stills are best effort
(skipped while it is down; the next step reports again), and a result waits for it, retried
every `RETRY_S`, until it answers or the job is stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from engine.pipeline.image_files import png_bytes
from engine.service.artifacts import ArtifactFiles
from engine.service.control import JobControl, StopKind
from engine.service.store import ArtifactRow, DatabaseUnavailableError, JobRow, JobStore, LeaseLostError
from spooky.errors import JobCancelled

R = TypeVar("R")

#: How often a write the job needs (a result's row, its source image) is tried while the database
#: does not answer, and how often a result waits for the lease to be confirmed.
RETRY_S = 0.5


class AttemptWriter:
    """The render thread's writes for one attempt of `control.job`."""

    def __init__(self, store: JobStore, files: ArtifactFiles, control: JobControl, nonce: str) -> None:
        self.store = store
        self.files = files
        self.control = control
        self.job: JobRow = control.job
        self.attempt = control.job.attempts
        self.nonce = nonce  # the worker's: a drained attempt number may run again elsewhere

    # --- best effort ------------------------------------------------------------------------

    def progress(self, stage: str, step: int, total: int, still: Image.Image | None) -> None:
        """Report a step (and its still); skipped while the database does not answer."""
        still_id = self._still(still, f"still-{stage}-{step}") if still is not None else None
        # While the database is down the store reports the outage; the next step reports again.
        with contextlib.suppress(DatabaseUnavailableError):
            self.store.record_progress(
                self.job.id, {"stage": stage, "step": step, "total": total}, still_id, attempt=self.attempt
            )

    def _still(self, image: Image.Image, role: str) -> str | None:
        if not self.control.lease_fresh():
            return None  # not confirmed as the job's holder lately: the shared folder is not ours
        row = self.files.write(
            png_bytes(image, self._metadata(role)),
            "image/png",
            job_id=self.job.id,
            width=image.width,
            height=image.height,
        )
        try:
            self.store.add_artifact(row, attempt=self.attempt)
        except DatabaseUnavailableError:
            self.files.delete([row])
            return None
        except BaseException:
            self.files.delete([row])
            raise
        return row.id

    # --- what the job needs -----------------------------------------------------------------

    def save_png(self, image: Image.Image, role: str, meta: dict[str, Any] | None = None) -> ArtifactRow:
        """A result image, indexed under this attempt; waits out an outage."""
        data = png_bytes(image, self._metadata(role, meta))
        return self._publish(
            lambda: self.files.write(
                data, "image/png", job_id=self.job.id, width=image.width, height=image.height
            )
        )

    def scratch(self, suffix: str) -> Path:
        """A scratch path of this attempt alone, for a file a stage writes itself (the MP4)."""
        return self.files.temp_path(f"{self.job.id}-{self.attempt}-{self.nonce}{suffix}")

    def adopt(self, path: Path, media_type: str, *, width: int | None, height: int | None) -> ArtifactRow:
        """Move a scratch file in as a result artifact, indexed under this attempt."""
        return self._publish(
            lambda: self.files.adopt(path, media_type, job_id=self.job.id, width=width, height=height)
        )

    def read(self, call: Callable[[], R]) -> R:
        """A store read the job cannot do without (its source image's row); waits out an outage."""
        return self._retry(call)

    def _publish(self, put: Callable[[], ArtifactRow]) -> ArtifactRow:
        while not self.control.lease_fresh():
            self._pause()
        row = put()
        try:
            self._retry(lambda: self.store.add_artifact(row, attempt=self.attempt))
        except BaseException:
            self.files.delete([row])  # refused (the job moved on) or stopped: it is nobody's file
            raise
        return row

    def _retry(self, call: Callable[[], R]) -> R:
        while True:
            try:
                return call()
            except DatabaseUnavailableError:
                self._pause()

    def _pause(self) -> None:
        """Wait a little for the database or the lease; end the wait when the job is stopped."""
        control = self.control
        if control.stop_kind is not None:
            if control.stop_kind is StopKind.LOST:
                raise LeaseLostError(f"job {self.job.id}: attempt {self.attempt} lost its lease")
            raise JobCancelled(f"stopped: {control.stop_kind}")
        control.stopping.wait(RETRY_S)

    def _metadata(self, role: str, meta: dict[str, Any] | None = None) -> dict[str, str]:
        metadata = {"job_id": self.job.id, "role": role, "prompt": self.job.request.prompt}
        metadata.update({k: str(v) for k, v in (meta or {}).items()})
        return metadata
