"""Artifact files (PNG stills, MP4 videos) under `<data_dir>/artifacts`, written atomically.

A file is written to a temporary name and renamed, so a crash never leaves half a PNG under a
real id. A full disk (ENOSPC, EDQUOT) becomes `DiskFullError`, which fails the job, not the engine.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.service.store import ArtifactRow, DiskFullError

log = logging.getLogger(__name__)

__all__ = ["ArtifactFiles", "DiskFullError", "DiskState", "new_id", "write_file"]

MEDIA_SUFFIX = {"image/png": ".png", "video/mp4": ".mp4"}
#: What health writes (and removes) to learn whether the disk takes writes again after it was full.
PROBE_BYTES = 16 * 1024
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def new_id() -> str:
    """A random artifact or job id (URL-safe, 16 characters)."""
    return secrets.token_urlsafe(12)


def write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` and flush it to disk (the one place artifact bytes hit the disk)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class DiskState:
    """The last disk-full incident, shown by /v1/health until a later write succeeds."""

    full_since: float | None = None
    detail: str | None = None


class ArtifactFiles:
    """Where artifact bytes live; the store keeps the index (`ArtifactRow`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.disk = DiskState()

    def _relative(self, artifact_id: str, media_type: str) -> str:
        # Two-character shards keep folders small after months of renders.
        return f"{artifact_id[:2]}/{artifact_id}{MEDIA_SUFFIX.get(media_type, '.bin')}"

    def path(self, row: ArtifactRow) -> Path:
        return self.root / row.path

    def temp_path(self, name: str) -> Path:
        """A scratch path for a file a stage writes itself (the MP4), adopted with `adopt`."""
        return self.tmp / name

    def _disk_full(self, e: OSError, what: str) -> DiskFullError:
        detail = f"disk full: could not write {what} under {self.root} ({e.strerror or e})"
        self.disk.full_since = self.disk.full_since or time.time()
        self.disk.detail = detail
        log.error(detail)
        return DiskFullError(
            detail, hint="free space on the engine's data_dir or lower artifact_retention_hours"
        )

    def _ok(self) -> None:
        if self.disk.full_since is not None:
            log.info("artifact writes succeed again; the disk-full condition is over")
        self.disk = DiskState()

    def mark_full(self, detail: str) -> None:
        """A write this class did not make (ffmpeg's MP4) met a full disk: health says so until a
        later write, or `probe`, succeeds."""
        self.disk.full_since = self.disk.full_since or time.time()
        self.disk.detail = detail

    def probe(self) -> bool:
        """Write and remove PROBE_BYTES in the scratch folder; True (and the condition cleared)
        when that fits again."""
        path = self.tmp / f".probe-{new_id()}"
        try:
            write_file(path, b"\0" * PROBE_BYTES)
        except OSError as e:
            if e.errno not in _DISK_FULL:
                raise
            return False
        finally:
            path.unlink(missing_ok=True)
        self._ok()
        return True

    def write(
        self,
        data: bytes,
        media_type: str,
        *,
        job_id: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> ArtifactRow:
        """Store `data` as a new artifact file; DiskFullError when the disk is full."""
        tmp = self.tmp / f"{new_id()}.part"
        try:
            write_file(tmp, data)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno in _DISK_FULL:
                raise self._disk_full(e, f"a {media_type} artifact of {len(data)} bytes") from e
            raise
        try:
            return self.adopt(tmp, media_type, job_id=job_id, width=width, height=height)
        finally:
            tmp.unlink(missing_ok=True)

    def adopt(
        self,
        src: Path,
        media_type: str,
        *,
        job_id: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> ArtifactRow:
        """Move a finished file (e.g. the MP4 a stage wrote) in as a new artifact."""
        artifact_id = new_id()
        rel = self._relative(artifact_id, media_type)
        final = self.root / rel
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            # Same filesystem (tmp lives under root): a rename, no copy. shutil.move copes otherwise.
            shutil.move(str(src), final)
        except OSError as e:
            if e.errno in _DISK_FULL:
                raise self._disk_full(e, f"the {media_type} file {src.name}") from e
            raise
        self._ok()
        return ArtifactRow(
            id=artifact_id,
            media_type=media_type,
            bytes=final.stat().st_size,
            path=rel,
            job_id=job_id,
            width=width,
            height=height,
        )

    def read(self, row: ArtifactRow) -> bytes:
        return self.path(row).read_bytes()

    def delete(self, rows: list[ArtifactRow]) -> int:
        """Remove the files of `rows` (already gone is fine); the number removed."""
        removed = 0
        for row in rows:
            try:
                self.path(row).unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def clean_tmp(self, older_than_s: float = 3600) -> int:
        """Delete scratch files and folders a crash left behind; the number removed.

        A kill during a re-encode leaves a `spooky-fit-*/` folder, a kill mid-write a `.part` file.
        Nothing here may stop the engine from starting: what cannot be removed is logged and left.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for p in list(self.tmp.iterdir()):
            try:
                if p.lstat().st_mtime >= cutoff:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("could not remove the leftover scratch path %s: %s", p, e.strerror or e)
        return removed

    def stray_files(self, known: Callable[[list[str]], set[str]], older_than_s: float) -> list[Path]:
        """Artifact files older than `older_than_s` whose id `known` does not report (no row).

        A kill between a file's move into place and its row's commit leaves such a file; nothing
        else would ever delete it. `known` gets ids in batches and returns those that have a row.
        """
        cutoff = time.time() - older_than_s
        stray: list[Path] = []
        for shard in sorted(self.root.iterdir()):
            if shard == self.tmp or not shard.is_dir():
                continue
            batch: dict[str, Path] = {}
            for f in shard.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if f.is_file() and f.stat().st_mtime < cutoff:
                        batch[f.stem] = f
            for i in range(0, len(batch), 500):
                ids = list(batch)[i : i + 500]
                have = known(ids)
                stray += [batch[a] for a in ids if a not in have]
        return stray
