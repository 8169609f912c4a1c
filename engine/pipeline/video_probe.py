"""What an MP4 holds, read by ffmpeg: codec, size, pixel format, frame rate, frames, duration."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine.pipeline.ffmpeg import ffmpeg_exe, run_to_end, stderr_tail
from spooky.errors import VideoError


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


def probe(path: Path | str) -> VideoInfo:
    """Codec, size, pixel format, fps and duration from ffmpeg's stream header; frames by decoding."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"cannot probe {path}: no such file")
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-nostats", "-i", str(path),
        "-map", "0:v:0", "-f", "null", "-progress", "pipe:1", "-",
    ]  # fmt: skip
    res = run_to_end(cmd, "probe", path)
    err = res.stderr.decode("utf-8", "replace")
    if res.returncode != 0:
        raise VideoError(f"ffmpeg cannot read {path}: {stderr_tail(res.stderr)}")
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
