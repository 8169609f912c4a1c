"""Check model files against the digest they must have (`spooky weights verify`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.models.digests import reference_digest, sha256_file
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


def file_statuses(names: list[str], cache_dir: Path, *, check: bool = False) -> list[FileStatus]:
    """Presence and size of each file of `names`; with `check`, compare digests too."""
    out = []
    for name in names:
        for wf in get_entry(name).files:
            path = Path(cache_dir).expanduser() / wf.filename
            if not path.is_file():
                out.append(FileStatus(name, path, False, None, "missing" if check else ""))
                continue
            size = path.stat().st_size
            if not check:
                out.append(FileStatus(name, path, True, size))
                continue
            reference = reference_digest(wf, path)
            digest = sha256_file(path)
            if reference is None:
                out.append(FileStatus(name, path, True, size, "unverified", f"sha256 {digest}, no reference"))
            elif digest == reference:
                out.append(FileStatus(name, path, True, size, "ok", f"sha256 {digest}"))
            else:
                out.append(
                    FileStatus(name, path, True, size, "mismatch", f"expected {reference}, got {digest}")
                )
    return out


def check_file(entry: str, path: Path, reference: str | None, *, what: str = "") -> FileStatus:
    """Compare `path` with `reference` (None: no digest is published for it)."""
    if not path.is_file():
        return FileStatus(entry, path, False, None, "missing", what)
    digest = sha256_file(path)
    size = path.stat().st_size
    label = f"{what}; " if what else ""
    if reference is None:
        return FileStatus(entry, path, True, size, "unverified", f"{label}sha256 {digest}, none published")
    if digest == reference.lower():
        return FileStatus(entry, path, True, size, "ok", f"{label}sha256 {digest}")
    detail = f"{label}expected {reference.lower()}, got {digest}"
    return FileStatus(entry, path, True, size, "mismatch", detail)
