"""Frames and stand-in ffmpeg binaries for the video and render tests."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from engine.pipeline.ffmpeg import ffmpeg_exe


def noise_frames(n: int, w: int, h: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def fake_ffmpeg(tmp_path: Path, body: str) -> str:
    script = tmp_path / "ffmpeg"
    script.write_text(f"#!/bin/bash\n{body}\n")
    script.chmod(0o755)
    return str(script)


def gated_ffmpeg(tmp_path: Path, gate: Path) -> str:
    """The real ffmpeg, started only once `gate` exists: until then nothing reads the pipe."""
    real = ffmpeg_exe()
    return fake_ffmpeg(tmp_path, f'while [ ! -e "{gate}" ]; do sleep 0.01; done\nexec {real} "$@"')


def sizing_ffmpeg(tmp_path: Path, log: Path) -> str:
    """The real ffmpeg, appending the size in bytes of every file a second x264 pass writes to `log`
    (one line per re-encode, in order): what each of `fit_to_budget`'s tries came to."""
    real = ffmpeg_exe()
    return fake_ffmpeg(
        tmp_path,
        f'"{real}" "$@"; rc=$?\n'
        f'case " $* " in *" -pass 2 "*) [ $rc -eq 0 ] && wc -c < "${{@: -1}}" >> "{log}";; esac\n'
        "exit $rc",
    )


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("video-writer:")]
