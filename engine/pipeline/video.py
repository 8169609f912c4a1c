"""Stream frames into ffmpeg as H.264 MP4, probe the result, and fit it to a byte budget.

Frames go from memory into ffmpeg's stdin as raw RGB (no PNG files on disk). The output is
H.264 (libx264), yuv420p, `+faststart` (the index sits before the media data, so Discord plays it
inline before the download ends) and inter-frame coded: no `-intra`, which made the original's
files several times larger.

yuv420p stores colour at half resolution, so x264 needs even width and height. An odd-sized frame
is padded by one pixel on the right and/or bottom edge by repeating the last column/row (not a
black line, not a rescale that blurs the whole frame); the video is then that one pixel larger.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from spooky.errors import VideoError

#: Environment variable naming the ffmpeg binary to use instead of imageio-ffmpeg's bundled one.
ENV_FFMPEG = "SPOOKY_FFMPEG"

#: Default x264 constant rate factor (preset medium). Measured with `benchmarks/bench_pipeline.py
#: --stages video` on 300 synthetic 608x752 frames of busy multi-scale colour noise with 16-px
#: blocks flipping the way VQGAN codes do: slow / medium / fast drift give 3.7 / 8.0 / 9.2 MiB at
#: crf 22 (crf 20: 4.5 / 9.9 / 12.1 MiB). So the usual nightmare fits 10 MiB in one pass and
#: `fit_to_budget` catches the rest.
DEFAULT_CRF = 22

#: Share of the byte budget given to the video stream when re-encoding; the rest is headroom for
#: the MP4 container (moov index, per-sample tables) and x264's rate-control error.
_BUDGET_HEADROOM = 0.95

#: Most re-encodes `fit_to_budget` tries before it gives up.
_MAX_FIT_ATTEMPTS = 6

#: Below this many bits per pixel per frame a lower bitrate only smears the picture: shrink instead.
_MIN_BITS_PER_PIXEL = 0.02

#: Smallest side `fit_to_budget` will scale a video down to.
_MIN_SIDE = 64

_STDERR_TAIL = 2000

#: Longest a finished ffmpeg may take to exit after its input ends, and a probe or one re-encode
#: pass may run: past this it is killed and the video fails (an ffmpeg that hangs never wedges the
#: worker). Generous: a 300-frame 1024x1024 two-pass re-encode takes well under a minute.
CHILD_DEADLINE_S = 600.0

# Every ffmpeg this process runs, while it runs: `stop_children` ends them when a job is stopped
# (cancel, time-out, drain) while its thread is blocked writing to or waiting on one.
_children: weakref.WeakSet[subprocess.Popen[bytes]] = weakref.WeakSet()
_children_lock = threading.Lock()


class VideoDiskFullError(VideoError):
    """No space left for the MP4 (or its re-encode): a full disk, not a video problem."""

    code = "disk_full"


def _spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
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


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` reads from a video file."""

    codec: str
    width: int
    height: int
    fps: float
    frames: int  # counted by decoding every frame
    pix_fmt: str
    duration: float  # seconds, from the container


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


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """The (w, h) the video gets for frames of `size`: odd sides grow by one pixel."""
    w, h = size
    return w + (w % 2), h + (h % 2)


def _h264_args(crf: int | None, preset: str) -> list[str]:
    args = ["-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p"]
    if crf is not None:
        args += ["-crf", str(crf)]
    return args


def _container_args() -> list[str]:
    return ["-movflags", "+faststart", "-f", "mp4"]


def _partial_path(path: Path) -> Path:
    # Written beside the target and renamed on success, so a crash never leaves a broken file
    # under the final name.
    return path.with_name(f".{path.name}.part")


def _read_tail(f: BinaryIO) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - _STDERR_TAIL))
    return f.read().decode("utf-8", "replace").strip()


def _failure(what: str, path: Path, stderr_tail: str) -> VideoError:
    if "No space left on device" in stderr_tail:
        return VideoDiskFullError(
            f"disk full while writing {path}",
            hint=f"free space on {path.parent} or lower pipeline.video_max_bytes / frames",
        )
    return VideoError(f"{what} failed for {path}: {stderr_tail or 'ffmpeg printed nothing'}")


class VideoWriter:
    """Encode frames to an MP4 through one ffmpeg process; use as a context manager.

    On a clean exit the file is finished and renamed into place; on an exception ffmpeg is
    stopped and the partial file removed.
    """

    def __init__(
        self,
        path: Path,
        size: tuple[int, int],
        fps: int = 30,
        crf: int = DEFAULT_CRF,
        preset: str = "medium",
    ) -> None:
        w, h = size
        if w < 1 or h < 1:
            raise VideoError(f"video size must be positive, got {w}x{h}")
        if fps < 1:
            raise VideoError(f"fps must be at least 1, got {fps}")
        self.path = Path(path)
        self.size = (w, h)
        self.fps = fps
        self.frames = 0
        self._pad = (h % 2, w % 2)  # rows, columns to add
        self._partial = _partial_path(self.path)
        exe = ffmpeg_exe()
        cmd = [
            exe,
            "-hide_banner", "-nostats", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w + self._pad[1]}x{h + self._pad[0]}",
            "-framerate", str(fps), "-i", "pipe:0",
            "-an", *_h264_args(crf, preset), "-r", str(fps), *_container_args(),
            str(self._partial),
        ]  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # stderr goes to a file, so a chatty ffmpeg never blocks on a full pipe.
        self._stderr: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close/abort)
        try:
            self._proc: subprocess.Popen[bytes] | None = _spawn(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
            )
        except OSError as e:
            self._stderr.close()
            raise VideoError(f"cannot start ffmpeg ({cmd[0]}): {e}") from e

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: Any) -> None:
        """Append one uint8 RGB frame [H, W, 3] (numpy array or CPU/GPU tensor)."""
        if self._proc is None or self._proc.stdin is None:
            raise VideoError(f"write to {self.path} after the video was closed")
        data = self._as_bytes(frame)
        try:
            self._proc.stdin.write(data)
        except BrokenPipeError as e:
            # ffmpeg exited mid-stream: its stderr says why.
            self._proc.wait()
            tail = _read_tail(self._stderr)
            self._cleanup()
            raise _failure("ffmpeg exited while encoding; encoding", self.path, tail) from e
        except OSError as e:
            self.abort()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise VideoDiskFullError(f"disk full while writing {self.path}") from e
            raise VideoError(f"writing a frame to ffmpeg failed for {self.path}: {e}") from e
        self.frames += 1

    def _as_bytes(self, frame: Any) -> memoryview:
        if hasattr(frame, "detach"):  # a torch tensor; torch is not imported here
            frame = frame.detach().cpu().numpy()
        arr = np.asarray(frame)
        w, h = self.size
        if arr.dtype != np.uint8 or arr.shape != (h, w, 3):
            raise ValueError(f"frame must be uint8 [{h}, {w}, 3], got {arr.dtype} {list(arr.shape)}")
        if any(self._pad):
            arr = np.pad(arr, ((0, self._pad[0]), (0, self._pad[1]), (0, 0)), mode="edge")
        return memoryview(np.ascontiguousarray(arr)).cast("B")  # no copy of a contiguous frame

    def close(self) -> Path:
        """Finish the file (waits for ffmpeg) and return its path; VideoError if ffmpeg failed."""
        proc = self._proc
        if proc is None:
            return self.path
        if self.frames == 0:
            self.abort()
            raise VideoError(f"no frames were written to {self.path}")
        self._close_stdin()  # a broken pipe here means ffmpeg exited: rc and stderr say why
        try:
            rc = proc.wait(CHILD_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.abort()
            raise VideoError(
                f"ffmpeg did not finish {self.path} within {CHILD_DEADLINE_S:g} s of its last frame; "
                "it was killed"
            ) from None
        tail = _read_tail(self._stderr)
        if rc != 0:
            self._cleanup()
            raise _failure(f"ffmpeg (exit code {rc}) encoding", self.path, tail)
        try:
            os.replace(self._partial, self.path)
        except FileNotFoundError as e:  # ffmpeg exited 0 without writing (a stand-in, or killed late)
            self._cleanup()
            raise VideoError(f"ffmpeg exited without writing {self.path}: {tail or 'no output'}") from e
        self._proc = None
        self._stderr.close()
        return self.path

    def kill(self) -> None:
        """Kill ffmpeg now, from any thread: a write blocked on its pipe fails at once."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file (idempotent)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        self._close_stdin()
        proc.wait()
        self._cleanup()

    def _close_stdin(self) -> None:
        # Closing flushes buffered bytes; if ffmpeg is gone that flush fails, but the pipe is
        # still closed (BufferedWriter closes the raw file even when the flush raises).
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()

    def _cleanup(self) -> None:
        self._close_stdin()
        self._proc = None
        self._stderr.close()
        self._partial.unlink(missing_ok=True)


_STOP = object()


class BackgroundWriter:
    """Feeds a `VideoWriter` from its own thread through a bounded queue of frames.

    `write` returns once the frame is queued, so the next frame computes while this one is
    converted and piped into ffmpeg; with `depth` frames waiting, `write` blocks (backpressure:
    memory stays bounded when x264 is slower than the render). An error in the thread (ffmpeg
    died, disk full) is raised by the next `write` or by `close`. On an exception `__exit__`
    kills ffmpeg, so a thread blocked on the pipe returns, and joins it: a cancel never hangs.
    """

    def __init__(self, writer: VideoWriter, depth: int = 3) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.writer = writer
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"video-writer:{writer.path.name}", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: Any) -> None:
        """Queue one frame (see `VideoWriter.write`); raises the thread's error if it failed."""
        self._raise_error()
        if not self._thread.is_alive():
            raise VideoError(f"write to {self.writer.path} after the video was closed")
        self._queue.put(frame)

    def close(self) -> None:
        """Wait until every queued frame is written; raises the thread's error if it failed."""
        self._stop()
        self._raise_error()

    def abort(self) -> None:
        """Drop the queued frames, stop ffmpeg and the thread (idempotent)."""
        self.writer.kill()
        self._stop()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)  # the thread keeps taking frames even after a failure
            self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        failed = False
        while True:
            frame = self._queue.get()
            if frame is _STOP:
                return
            if failed:
                continue  # drain, so a producer blocked on a full queue wakes up
            try:
                self.writer.write(frame)
            except BaseException as e:  # handed to the render thread, which raises it
                self._error, failed = e, True


def encode_frames(
    frames: Iterable[Any],
    path: Path,
    size: tuple[int, int],
    fps: int,
    max_bytes: int | None,
    crf: int = DEFAULT_CRF,
    preset: str = "medium",
) -> Path:
    """Stream `frames` into an MP4 at `path`, then re-encode it smaller if it exceeds `max_bytes`."""
    with VideoWriter(Path(path), size, fps=fps, crf=crf, preset=preset) as writer:
        for frame in frames:
            writer.write(frame)
    if max_bytes is not None:
        fit_to_budget(Path(path), max_bytes)
    return Path(path)


# --- probing -----------------------------------------------------------------------------------


def _split_top_level(text: str) -> list[str]:
    """Split ffmpeg's stream description on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _run(cmd: list[str], what: str, path: Path) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = _spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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


def probe(path: Path | str) -> VideoInfo:
    """Codec, size, pixel format, fps and duration from ffmpeg's stream header; frames by decoding."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"cannot probe {path}: no such file")
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-nostats", "-i", str(path),
        "-map", "0:v:0", "-f", "null", "-progress", "pipe:1", "-",
    ]  # fmt: skip
    res = _run(cmd, "probe", path)
    err = res.stderr.decode("utf-8", "replace")
    if res.returncode != 0:
        raise VideoError(f"ffmpeg cannot read {path}: {err.strip()[-_STDERR_TAIL:]}")
    stream = re.search(r"Stream #0:\d+.*?: Video: (.+)", err)
    if not stream:
        raise VideoError(f"{path} has no video stream")
    parts = _split_top_level(stream.group(1))
    codec = parts[0].split()[0]
    pix_fmt_match = re.match(r"[\w]+", parts[1]) if len(parts) > 1 else None
    size_match = next((m for p in parts if (m := re.match(r"(\d+)x(\d+)", p))), None)
    fps_match = next((m for p in parts if (m := re.fullmatch(r"([\d.]+)(k?) fps", p))), None)
    if not (pix_fmt_match and size_match and fps_match):
        raise VideoError(f"cannot parse ffmpeg's description of {path}: {stream.group(0)}")
    fps = float(fps_match.group(1)) * (1000 if fps_match.group(2) else 1)
    dur = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", err)
    duration = int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3)) if dur else 0.0
    counted = re.findall(r"^frame=(\d+)$", res.stdout.decode("ascii", "replace"), re.MULTILINE)
    return VideoInfo(
        codec=codec,
        width=int(size_match.group(1)),
        height=int(size_match.group(2)),
        fps=fps,
        frames=int(counted[-1]) if counted else 0,
        pix_fmt=pix_fmt_match.group(0),
        duration=duration,
    )


# --- fitting a byte budget -------------------------------------------------------------------


class _BitrateTooLow(VideoError):
    """x264 refuses a bitrate this low for this size and frame rate."""


def _reencode(src: Path, dst: Path, bitrate: int, size: tuple[int, int], fps: float, workdir: Path) -> None:
    """Two-pass x264 at `bitrate` bits/s (scaled to `size`): pass 1 only measures, pass 2 writes."""
    exe = ffmpeg_exe()
    common = [
        "-an", "-vf", f"scale={size[0]}:{size[1]}:flags=lanczos", "-r", f"{fps:g}",
        "-c:v", "libx264", "-preset", "medium", "-pix_fmt", "yuv420p",
        "-b:v", str(bitrate), "-maxrate", str(int(bitrate * 1.5)), "-bufsize", str(bitrate * 2),
        "-passlogfile", str(workdir / "x264"),
    ]  # fmt: skip
    head = [exe, "-hide_banner", "-nostats", "-loglevel", "error", "-y", "-i", str(src)]
    passes = (
        [*head, *common, "-pass", "1", "-f", "null", os.devnull],
        [*head, *common, "-pass", "2", *_container_args(), str(dst)],
    )
    for n, cmd in enumerate(passes, start=1):
        res = _run(cmd, "re-encode", src)
        if res.returncode != 0:
            dst.unlink(missing_ok=True)
            tail = res.stderr.decode("utf-8", "replace").strip()[-_STDERR_TAIL:]
            if "bitrate is too low" in tail:
                raise _BitrateTooLow(tail)
            raise _failure(f"re-encoding (pass {n})", src, tail)


def fit_to_budget(path: Path, max_bytes: int) -> Path:
    """Re-encode `path` in place until it is at most `max_bytes`; VideoError if it cannot fit.

    The bitrate comes from the budget and the duration (5 % left for the container); when a try
    still overshoots, the next one scales the bitrate by how much it missed, and once the bitrate
    would drop below a watchable bits-per-pixel floor the picture is scaled down instead.
    """
    path = Path(path)
    size_now = path.stat().st_size
    if size_now <= max_bytes:
        return path
    info = probe(path)
    if info.frames == 0 or info.fps <= 0:
        raise VideoError(f"cannot fit {path} to {max_bytes} bytes: it has no decodable frames")
    duration = info.frames / info.fps
    bitrate = int(max_bytes * 8 * _BUDGET_HEADROOM / duration)
    w, h = info.width, info.height
    best = size_now
    reason = f"the smallest of {_MAX_FIT_ATTEMPTS} re-encodes"
    with tempfile.TemporaryDirectory(prefix="spooky-fit-", dir=path.parent) as tmp:
        workdir = Path(tmp)
        candidate = workdir / "fit.mp4"
        for _ in range(_MAX_FIT_ATTEMPTS):
            # Too few bits for this many pixels: shrink the picture so the bitrate stays useful.
            while bitrate < _MIN_BITS_PER_PIXEL * w * h * info.fps and min(w, h) > _MIN_SIDE:
                scale = max(0.5, math.sqrt(bitrate / (_MIN_BITS_PER_PIXEL * w * h * info.fps)))
                w, h = _even_at_least(w * scale), _even_at_least(h * scale)
            try:
                _reencode(path, candidate, bitrate, (w, h), info.fps, workdir)
            except _BitrateTooLow:
                reason = f"x264's lowest bitrate for {w}x{h} at {info.fps:g} fps still overshoots; the best"
                break
            got = candidate.stat().st_size
            best = min(best, got)
            if got <= max_bytes:
                shutil.move(candidate, path)
                return path
            # Aim under the budget by the fraction we missed it, with a little extra margin.
            bitrate = int(bitrate * max_bytes / got * 0.9)
    raise VideoError(
        f"cannot fit {path} into {max_bytes} bytes: {reason} was {best} bytes "
        f"({info.frames} frames, {duration:.2f} s)",
        hint="use fewer frames or a smaller size, or raise pipeline.video_max_bytes",
    )


def _even_at_least(x: float) -> int:
    return max(_MIN_SIDE, int(x) // 2 * 2)
