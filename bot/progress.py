"""What a job's message says at each moment, and how often it may be edited."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.text import duration, escape
from spooky.contract import Event, EventType, JobKind, JobState, JobView

BAR_WIDTH = 20

#: Engine stage names as users read them; unknown stages are shown as they come.
STAGE_LABELS = {
    "stylegan": "Dreaming up a face",
    "scare": "Making it scary",
    "nightmare": "Animating the nightmare",
    "encode": "Encoding the video",
}


def bar(step: int, total: int, width: int = BAR_WIDTH) -> str:
    """A text progress bar: `█████░░░░░ 50%`."""
    frac = 0.0 if total <= 0 else min(1.0, max(0.0, step / total))
    filled = round(frac * width)
    return f"`{'█' * filled}{'░' * (width - filled)}` {round(frac * 100)}%"


@dataclass
class JobSnapshot:
    """The latest known state of one job, folded from its events."""

    job_id: str
    kind: JobKind
    prompt: str
    user_id: str
    state: JobState = JobState.QUEUED
    position: int | None = None
    eta_s: float | None = None
    stage: str | None = None
    step: int = 0
    total: int = 0
    still: str | None = None  # artifact id of the latest still
    error: str | None = None
    retried: bool = False

    @classmethod
    def from_job(cls, job: JobView) -> JobSnapshot:
        snap = cls(job.id, job.kind, job.request.prompt, job.request.requester.user_id, job.state)
        snap.position, snap.eta_s = job.position, job.eta_s
        if job.progress is not None:
            snap.stage, snap.step, snap.total = job.progress.stage, job.progress.step, job.progress.total
        snap.still = job.artifacts.get("still")
        snap.error = job.error
        return snap

    def apply(self, event: Event) -> bool:
        """Fold one event in; return True when the message should change."""
        data = event.data
        match event.type:
            case EventType.QUEUED:
                self.state = JobState.QUEUED
                self.position = data.get("position", self.position)
                self.eta_s = data.get("eta_s", self.eta_s)
            case EventType.STARTED:
                self.state, self.position = JobState.RUNNING, None
            case EventType.PROGRESS:
                self.state, self.position = JobState.RUNNING, None
                self.stage = data.get("stage", self.stage)
                self.step = int(data.get("step", self.step))
                self.total = int(data.get("total", self.total))
                if data.get("still"):
                    self.still = data["still"]
            case EventType.FINISHED:
                self.state = JobState.SUCCEEDED
            case EventType.FAILED:
                self.state, self.error = JobState.FAILED, data.get("reason") or self.error
            case EventType.CANCELLED:
                self.state = JobState.CANCELLED
            case EventType.INTERRUPTED:
                self.retried = bool(data.get("retried"))
                self.state = JobState.QUEUED if self.retried else JobState.FAILED
                if not self.retried:
                    self.error = data.get("reason") or "the engine stopped while rendering"
        return True


def _title(kind: JobKind, prompt: str, user_id: str) -> str:
    icon = "🎃" if kind is JobKind.SPOOKY else "🕯️"
    return f"{icon} **{escape(prompt, limit=200)}** · <@{user_id}>"


def render_progress(snap: JobSnapshot) -> str:
    """The progress message while a job waits or runs."""
    lines = [_title(snap.kind, snap.prompt, snap.user_id)]
    if snap.state is JobState.QUEUED:
        where = f"position **{snap.position}**" if snap.position else "waiting"
        again = " (restarted after an engine interruption)" if snap.retried else ""
        lines.append(f"⏳ In the queue: {where}{again} · ready in about {duration(snap.eta_s)}")
    else:
        label = STAGE_LABELS.get(snap.stage or "", (snap.stage or "starting").replace("_", " ").capitalize())
        lines.append(f"⚙️ {label}: step {snap.step}/{snap.total}" if snap.total else f"⚙️ {label}…")
        lines.append(bar(snap.step, snap.total))
    return "\n".join(lines)


def render_result(job: JobView, *, note: str | None = None) -> str:
    """The final message: what was made and how to reproduce it."""
    req = job.request
    lines = [_title(job.kind, req.prompt, req.requester.user_id)]
    result = job.result
    settings = result.get("settings") if isinstance(result.get("settings"), dict) else {}
    if job.kind is JobKind.SPOOKY:
        # A member's picture as the start: no face was generated, so no face steps to tell.
        from_picture = settings.get("start") == "image"
        parts = [f"seed **{result.get('seed', req.seed)}**"]
        shown = (
            (("scare_steps", "scare steps"),)
            if from_picture
            else (("steps", "steps"), ("scare_steps", "scare steps"))
        )
        for key, label in shown:
            value = settings.get(key, getattr(req, key))
            if value is not None:
                parts.append(f"{value} {label}")
        if req.scare_prompt:
            parts.append(f"scare prompt: {escape(req.scare_prompt, limit=150)}")
        lines.append("✅ " + " · ".join(parts))
        if from_picture:
            lines.append("Your picture after the scare pass.")
        else:
            lines.append("Left: the StyleGAN face. Right: after the scare pass.")
    else:
        frames = settings.get("frames", req.frames)
        fps = settings.get("fps")
        detail = [f"{frames} frames" if frames else None, f"{fps} fps" if fps else None]
        if result.get("seed") is not None:
            detail.append(f"seed **{result['seed']}**")
        lines.append("✅ Nightmare ready · " + " · ".join(d for d in detail if d))
    if note:
        lines.append(note)
    return "\n".join(lines)


def render_stopped(job: JobView) -> str:
    """A failed or cancelled job: say why."""
    lines = [_title(job.kind, job.request.prompt, job.request.requester.user_id)]
    if job.state is JobState.CANCELLED:
        lines.append("🛑 Cancelled.")
    else:
        reason = job.error or "the engine did not say why"
        lines.append(f"❌ The render failed: {escape(reason, limit=400)}")
    return "\n".join(lines)


class EditThrottle:
    """At most one edit per `interval_s` for one message (Discord rate limits, SPEC §5)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None

    def wait_s(self) -> float:
        """Seconds to wait before the next edit is allowed (0 = now)."""
        if self._last is None:
            return 0.0
        return max(0.0, self._last + self.interval_s - self._clock())

    def mark(self) -> None:
        self._last = self._clock()
