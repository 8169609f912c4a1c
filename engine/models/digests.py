"""sha256 of model files: the sidecar a download leaves, the record that spares re-hashing, the check."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models.registry import WeightFile
from spooky.errors import CorruptWeightsError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
RECORDS_FILENAME = "file-digests.json"


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_sidecar(path: Path) -> str | None:
    """The digest `<path>.sha256` gives (its first word, `sha256sum` format), or None."""
    side = sidecar_path(path)
    try:
        words = side.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None
    return words[0].lower() if words else None


def reference_digest(wf: WeightFile, path: Path) -> str | None:
    """The digest `path` must have: the registry's, else the one recorded at first download."""
    return wf.sha256.lower() if wf.sha256 else read_sidecar(path)


def write_sidecar(path: Path, digest: str) -> None:
    sidecar_path(path).write_text(f"{digest}  {path.name}\n", encoding="utf-8")


@dataclass(frozen=True)
class Reference:
    """The sha256 a model file must have, who says so, and what to do when it has another."""

    sha256: str
    source: str  # completes "…, {source} {sha256}", e.g. "OpenAI publishes"
    fix: str


class DigestRecords:
    """The sha256 of each model file as last hashed, with the size and mtime it had then.

    Kept as one JSON file (`file-digests.json` in the cache directory), keyed by the resolved
    path. A file whose size and mtime are those recorded is not hashed again; any other is, and
    the record follows. `path=None` keeps nothing: every digest is computed.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._records: dict[str, dict[str, Any]] | None = None
        self._warned = False

    @classmethod
    def in_cache(cls, cache_dir: Path) -> DigestRecords:
        return cls(Path(cache_dir).expanduser() / RECORDS_FILENAME)

    def digest(self, file: Path, *, fresh: bool = False) -> str:
        """`file`'s sha256: the recorded one while its size and mtime are unchanged, else hashed
        now (always, with `fresh`)."""
        key = str(file.resolve())
        before = file.stat()
        known = self._load().get(key)
        if not fresh and known and (known["size"], known["mtime_ns"]) == (before.st_size, before.st_mtime_ns):
            return known["sha256"]
        why = "changed since it was last hashed" if known else "not hashed before"
        log.info("hashing %s (%s, %.0f MiB)", file, "asked to" if fresh else why, before.st_size / 2**20)
        digest = sha256_file(file)
        after = file.stat()
        if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
            self.record(file, digest, stat=after)
        return digest

    def record(self, file: Path, digest: str, *, stat: os.stat_result | None = None) -> None:
        """Remember that `file`, as it is now, hashes to `digest` (just computed by the caller)."""
        if self.path is None:
            return
        st = stat or file.stat()
        records = self._load()
        records[str(file.resolve())] = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".file-digests.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(records, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning(
                    "cannot keep file digests in %s (%s); files will be hashed at every load", self.path, e
                )

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._records is None:
            self._records = self._read()
        return self._records

    def _read(self) -> dict[str, dict[str, Any]]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("ignoring %s, which cannot be read (%s); files will be hashed again", self.path, e)
            return {}
        good = {}
        for key, rec in data.items() if isinstance(data, dict) else ():
            if (
                isinstance(rec, dict)
                and isinstance(rec.get("sha256"), str)
                and all(
                    isinstance(rec.get(k), int) and not isinstance(rec.get(k), bool)
                    for k in ("size", "mtime_ns")
                )
            ):
                good[key] = {
                    "sha256": rec["sha256"].lower(),
                    "size": rec["size"],
                    "mtime_ns": rec["mtime_ns"],
                }
        return good


def require_digest(path: Path, reference: Reference, records: DigestRecords, *, what: str) -> None:
    """CorruptWeightsError naming `path`, both digests and the fix, unless `path` has `reference`'s."""
    actual = records.digest(path)
    if actual != reference.sha256.lower():
        raise CorruptWeightsError(
            f"{what} at {path} fails its checksum: its sha256 is {actual}, "
            f"{reference.source} {reference.sha256.lower()}",
            hint=reference.fix,
        )
