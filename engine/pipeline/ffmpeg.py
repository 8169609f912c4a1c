"""The ffmpeg binary and its processes: which binary, start and stop them, and what a failure means.

Every ffmpeg the engine runs (the writer's encoder, a probe, a re-encode) starts here, so one call
(`stop_children`) ends them all when a job is stopped while its thread waits on one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import weakref
from pathlib import Path
from typing import Any, BinaryIO

from spooky.errors import VideoError

#: Environment variable naming the ffmpeg binary to use instead of imageio-ffmpeg's bundled one.
ENV_FFMPEG = "SPOOKY_FFMPEG"

#: Longest a finished ffmpeg may take to exit after its input ends, and a probe or one re-encode
#: pass may run: past this it is killed and the video fails (an ffmpeg that hangs never wedges the
#: worker). Generous: far longer than a 300-frame 1024x1024 two-pass re-encode takes.
CHILD_DEADLINE_S = 600.0

#: How much of ffmpeg's stderr an error message quotes (its end, where the cause is).
STDERR_TAIL = 2000

#: Output options of every MP4 the engine writes: the index before the media data (`+faststart`),
#: so Discord plays it inline before the download ends.
MP4_ARGS = ("-movflags", "+faststart", "-f", "mp4")

# Every ffmpeg this process runs, while it runs: `stop_children` ends them when a job is stopped
# (cancel, time-out, drain) while its thread is blocked writing to or waiting on one.
_children: weakref.WeakSet[subprocess.Popen[bytes]] = weakref.WeakSet()
_children_lock = threading.Lock()


class VideoDiskFullError(VideoError):
    """No space left for the MP4 (or its re-encode): a full disk, not a video problem."""

    code = "disk_full"


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: $SPOOKY_FFMPEG if set, else imageio-ffmpeg's bundled one."""
    override = os.environ.get(ENV_FFMPEG)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise VideoError(
                f"ffmpeg not found: {ENV_FFMPEG}={override} is not an executable file",
                hint=f"point {ENV_FFMPEG} at an ffmpeg binary or unset it to use the bundled one",
            )
        return override
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as e:
        raise VideoError(
            "ffmpeg not found: imageio-ffmpeg's bundled binary is missing",
            hint=f"reinstall with scripts/setup.sh or set {ENV_FFMPEG}",
        ) from e
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        raise VideoError(
            f"ffmpeg not found: {exe} is missing or not executable",
            hint=f"reinstall with scripts/setup.sh or set {ENV_FFMPEG}",
        )
    return exe


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ffmpeg in its own session, so a Ctrl-C or a SIGTERM to the engine's process group
    does not kill it mid-file: the engine's drain decides when an encode stops."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    with _children_lock:
        _children.add(proc)
    return proc


def stop_children() -> int:
    """Kill every ffmpeg still running (their callers then fail fast); the number killed."""
    with _children_lock:
        procs = [p for p in _children if p.poll() is None]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    return len(procs)


def run_to_end(cmd: list[str], what: str, path: Path) -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg with no input until it exits (killed after `CHILD_DEADLINE_S`); its output.

    `what` and `path` name the work in the error ("cannot run ffmpeg to probe clip.mp4").
    """
    try:
        proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        raise VideoError(f"cannot run ffmpeg ({cmd[0]}) to {what} {path}: {e}") from e
    with proc:
        try:
            out, err = proc.communicate(timeout=CHILD_DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise VideoError(
                f"ffmpeg did not {what} {path} within {CHILD_DEADLINE_S:g} s; it was killed"
            ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def stderr_tail(data: bytes) -> str:
    """The end of ffmpeg's stderr, as text."""
    return data.decode("utf-8", "replace").strip()[-STDERR_TAIL:]


def file_tail(f: BinaryIO) -> str:
    """The end of ffmpeg's stderr collected in a file, as text."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - STDERR_TAIL))
    return f.read().decode("utf-8", "replace").strip()


def failure(what: str, path: Path, tail: str) -> VideoError:
    """The error for an ffmpeg that failed at `what` on `path`: disk full, or what it printed."""
    if "No space left on device" in tail:
        return VideoDiskFullError(
            f"disk full while writing {path}",
            hint=f"free space on {path.parent} or lower pipeline.video_max_bytes / frames",
        )
    return VideoError(f"{what} failed for {path}: {tail or 'ffmpeg printed nothing'}")
