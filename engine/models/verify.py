"""Check model files against the digest they must have (`spooky weights verify`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.models.digests import DigestRecords, reference_digest
from engine.models.registry import get_entry


@dataclass(frozen=True)
class FileStatus:
    entry: str
    path: Path
    present: bool
    size: int | None
    # "ok" | "mismatch" | "unverified" (no reference digest) | "missing" | "" (not checked)
    check: str = ""
    detail: str = ""


def file_statuses(
    names: list[str], cache_dir: Path, *, check: bool = False, records: DigestRecords | None = None
) -> list[FileStatus]:
    """Presence and size of each file of `names` in the cache; with `check`, compare digests too."""
    out = []
    for name in names:
        for wf in get_entry(name).files:
            path = Path(cache_dir).expanduser() / wf.filename
            if not check or not path.is_file():
                present = path.is_file()
                size = path.stat().st_size if present else None
                out.append(FileStatus(name, path, present, size, "missing" if check else ""))
                continue
            out.append(check_file(name, path, reference_digest(wf, path), records=records))
    return out


def check_file(
    entry: str, path: Path, reference: str | None, *, what: str = "", records: DigestRecords | None = None
) -> FileStatus:
    """Hash `path` and compare it with `reference` (None: no digest is published or recorded).

    The digest is recorded in `records` (the cache's), so that the engine need not hash the file
    again while its size and mtime stay the same.
    """
    label = f"{what}; " if what else ""
    if not path.is_file():
        return FileStatus(
            entry, path, False, None, "missing", f"{label}a directory" if path.is_dir() else what
        )
    digest = (records or DigestRecords(None)).digest(path, fresh=True)
    size = path.stat().st_size
    if reference is None:
        return FileStatus(entry, path, True, size, "unverified", f"{label}sha256 {digest}, none published")
    if digest == reference.lower():
        return FileStatus(entry, path, True, size, "ok", f"{label}sha256 {digest}")
    detail = f"{label}expected {reference.lower()}, got {digest}"
    return FileStatus(entry, path, True, size, "mismatch", detail)
