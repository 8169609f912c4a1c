"""Fetch registry entries into the cache directory, trying each mirror in turn."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.models.digests import DigestRecords, reference_digest, write_sidecar
from engine.models.download import download
from engine.models.registry import WeightFile, WeightsEntry, get_entry
from spooky.errors import DownloadError

log = logging.getLogger(__name__)


def manual_hint(entry: WeightsEntry, wf: WeightFile, path: Path) -> str:
    """How to use a copy of `entry`'s file that the operator downloaded by hand."""
    keys = " and ".join(f"`{k}`" for k in entry.settings)
    check = "checks it against the published digest" if wf.sha256 else "shows its sha256 (none is published)"
    return (
        f"download it by hand (a browser gets past login and confirmation pages) and save it as {path}, "
        f"or point {keys} in the [models] section of config.toml at your copy; "
        f"`spooky weights verify {entry.name} --file PATH` {check}"
    )


def fetch_file(
    wf: WeightFile,
    cache_dir: Path,
    *,
    progress: bool = True,
    entry: WeightsEntry | None = None,
    records: DigestRecords | None = None,
) -> Path:
    """Make sure `wf` is in `cache_dir` (download it if absent or failing its checksum).

    Every mirror is tried in order; when none works the error names each one and why. The digest
    of what was downloaded is recorded (`records`, by default the cache's), so that neither the
    next fetch nor the engine hashes the file again while it is unchanged.
    """
    path = Path(cache_dir).expanduser() / wf.filename
    if path.is_dir():
        raise DownloadError(
            f"{path} is a directory, where {wf.filename} should be downloaded to",
            hint="move or remove the directory, then fetch again",
        )
    records = records or DigestRecords.in_cache(cache_dir)
    reference = reference_digest(wf, path)
    if path.is_file():
        if reference is None or records.digest(path) == reference:
            log.info("%s already present", path)
            return path
        log.warning("%s fails its checksum; downloading it again", path)
    errors = []
    for url in wf.urls:
        if url.startswith("http://") and reference is None:
            log.warning("%s is plain http and %s has no published digest", url, wf.filename)
        try:
            digest = download(url, path, reference, progress, expected_size=wf.approx_size)
        except DownloadError as e:
            errors.append(e.message)
            log.warning("%s", e)
            continue
        if reference is None:
            write_sidecar(path, digest)
        records.record(path, digest)
        return path
    tried = "".join(f"\n  {i}. {err}" for i, err in enumerate(errors, 1))
    todo = manual_hint(entry, wf, path) if entry else f"download it by hand and save it as {path}"
    # What to do goes on its own line after the list, not in parentheses after the last mirror.
    failed = f"could not download {path.name}: all {len(wf.urls)} mirror(s) failed:{tried}"
    raise DownloadError(f"{failed}\n{todo}")


def fetch(name: str, cache_dir: Path, *, progress: bool = True) -> list[Path]:
    entry = get_entry(name)
    return [fetch_file(wf, cache_dir, progress=progress, entry=entry) for wf in entry.files]
