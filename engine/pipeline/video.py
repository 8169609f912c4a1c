"""Stream frames into ffmpeg as an H.264 MP4, from the render thread or a writer thread of its own.

Frames go from memory into ffmpeg's stdin as raw RGB (no PNG files on disk). The output is
H.264 (libx264), yuv420p, `+faststart` and inter-frame coded: no `-intra`, which made the
original's files several times larger. Probing a file is engine.pipeline.video_probe; fitting
it to a byte budget, engine.pipeline.video_budget.

yuv420p stores colour at half resolution, so x264 needs even width and height. An odd-sized frame
is padded by one pixel on the right and/or bottom edge by repeating the last column/row (not a
black line, not a rescale that blurs the whole frame); the video is then that one pixel larger.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from engine.pipeline.ffmpeg import (
    CHILD_DEADLINE_S,
    MP4_ARGS,
    VideoDiskFullError,
    failure,
    ffmpeg_exe,
    file_tail,
    spawn,
)
from spooky.errors import VideoError

#: Default x264 constant rate factor (preset medium): the usual nightmare fits Discord's 10 MiB
#: in one pass, and `fit_to_budget` re-encodes the rest (docs/operators.md has the measurement).
DEFAULT_CRF = 22


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """The (w, h) the video gets for frames of `size`: odd sides grow by one pixel."""
    w, h = size
    return w + (w % 2), h + (h % 2)


def _h264_args(crf: int | None, preset: str) -> list[str]:
    args = ["-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p"]
    if crf is not None:
        args += ["-crf", str(crf)]
    return args


def _partial_path(path: Path) -> Path:
    # Written beside the target and renamed on success, so a crash never leaves a broken file
    # under the final name.
    return path.with_name(f".{path.name}.part")


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
            "-an", *_h264_args(crf, preset), "-r", str(fps), *MP4_ARGS,
            str(self._partial),
        ]  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # stderr goes to a file, so a chatty ffmpeg never blocks on a full pipe.
        self._stderr: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close/abort)
        try:
            self._proc: subprocess.Popen[bytes] | None = spawn(
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
            tail = file_tail(self._stderr)
            self._cleanup()
            raise failure("ffmpeg exited while encoding; encoding", self.path, tail) from e
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
        tail = file_tail(self._stderr)
        if rc != 0:
            self._cleanup()
            raise failure(f"ffmpeg (exit code {rc}) encoding", self.path, tail)
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
    crf: int = DEFAULT_CRF,
    preset: str = "medium",
) -> Path:
    """Stream `frames` into an MP4 at `path` and return its path."""
    with VideoWriter(Path(path), size, fps=fps, crf=crf, preset=preset) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(path)
