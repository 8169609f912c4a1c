"""Fit an MP4 into a byte budget (Discord's upload limit): re-encode it at a bitrate that fits."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

from engine.pipeline.ffmpeg import MP4_ARGS, failure, ffmpeg_exe, run_to_end, stderr_tail
from engine.pipeline.video_probe import probe
from spooky.errors import VideoError

#: Share of the byte budget given to the video stream when re-encoding; the rest is headroom for
#: the MP4 container (moov index, per-sample tables) and x264's rate-control error.
_BUDGET_HEADROOM = 0.95

#: Most re-encodes `fit_to_budget` tries before it gives up.
_MAX_FIT_ATTEMPTS = 6

#: Below this many bits per pixel per frame a lower bitrate only smears the picture: shrink instead.
_MIN_BITS_PER_PIXEL = 0.02

#: Smallest side `fit_to_budget` will scale a video down to.
_MIN_SIDE = 64


class _BitrateTooLow(VideoError):
    """x264 refuses a bitrate this low for this size and frame rate."""


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
        [*head, *common, "-pass", "2", *MP4_ARGS, str(dst)],
    )
    for n, cmd in enumerate(passes, start=1):
        res = run_to_end(cmd, "re-encode", src)
        if res.returncode != 0:
            dst.unlink(missing_ok=True)
            tail = stderr_tail(res.stderr)
            if "bitrate is too low" in tail:
                raise _BitrateTooLow(tail)
            raise failure(f"re-encoding (pass {n})", src, tail)


def _even_at_least(x: float) -> int:
    return max(_MIN_SIDE, int(x) // 2 * 2)
