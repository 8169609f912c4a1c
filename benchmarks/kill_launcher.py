"""`spooky engine …` that SIGKILLs itself at one chosen point: the fault injector of kill_points.py.

    SPOOKY_KILL_AT=<point> python benchmarks/kill_launcher.py engine --config config.toml

Points: load (model load under way), submit (after a submit's commit, before its answer),
stylegan / scare / nightmare (at a step of that stage, before its progress is stored), fsync
(an artifact's bytes are on disk, not yet renamed), move (an artifact file is in place, its row not
yet written), video_close (the encoder is finishing the MP4), fit (a re-encode to the byte budget
is under way: its `spooky-fit-*` folder exists; the budget is forced down so every nightmare
re-encodes). Without the variable it is the plain
engine. Hooks wrap the real functions; nothing in the engine knows about them.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POINT = os.environ.pop("SPOOKY_KILL_AT", "")


def die() -> None:
    sys.stderr.write(f"kill_launcher: SIGKILL at {POINT}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install() -> None:
    from engine.service import artifacts, store

    if POINT == "load":
        import engine.models.factory as factory

        factory.load_models = lambda *a, **k: die()  # type: ignore[assignment]
    elif POINT == "submit":
        original = store.SQLiteStore.submit_many

        def submit_many(self: Any, *a: Any, **k: Any) -> Any:
            original(self, *a, **k)
            die()

        store.SQLiteStore.submit_many = submit_many  # type: ignore[method-assign]
    elif POINT in ("stylegan", "scare", "nightmare"):
        original_progress = store.SQLiteStore.record_progress

        def record_progress(self: Any, job_id: str, progress: dict[str, Any], still: Any) -> Any:
            if progress.get("stage") == POINT and progress.get("step", 0) >= 2:
                die()
            return original_progress(self, job_id, progress, still)

        store.SQLiteStore.record_progress = record_progress  # type: ignore[method-assign]
    elif POINT == "fsync":
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            real_fsync(fd)
            die()

        artifacts.os.fsync = fsync  # type: ignore[attr-defined]  # os itself: artifacts calls os.fsync
    elif POINT == "move":
        real_move = shutil.move

        def move(src: Any, dst: Any, *a: Any, **k: Any) -> Any:
            real_move(src, dst, *a, **k)
            die()

        artifacts.shutil.move = move  # type: ignore[attr-defined]
    elif POINT == "video_close":
        from engine.pipeline import video

        video.VideoWriter.close = lambda self: die()  # type: ignore[assignment,method-assign]
    elif POINT == "fit":
        from engine.pipeline import render, video_budget

        real_fit = video_budget.fit_to_budget
        video_budget._reencode = lambda *a, **k: die()  # type: ignore[assignment]
        render.fit_to_budget = lambda path, max_bytes: real_fit(path, min(max_bytes, 1024))  # type: ignore[assignment]
    elif POINT:
        raise SystemExit(f"unknown kill point {POINT!r}")


if __name__ == "__main__":
    install()
    from spooky.cli import main

    sys.exit(main(sys.argv[1:]))
