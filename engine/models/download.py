"""Download one URL to a file: resumable, checksummed, refusing web pages and files far too small."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from engine.models.file_kinds import looks_like_html_bytes
from spooky.errors import DownloadError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _check_size(url: str, name: str, total: int, expected: int | None) -> None:
    # Sizes are approximate (publishers give "1 GB"), so only a file under half of it is refused:
    # an error page, or a mirror that serves something else under the same name.
    if expected is not None and expected >= 1_000_000 and total < expected // 2:
        raise DownloadError(
            f"{url} sends {human_size(total)} for {name}, which is about {human_size(expected)}: "
            "not the model file",
        )


def _open(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "spookygan-weights/1"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout)


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    progress: bool = True,
    *,
    expected_size: int | None = None,
    timeout: float = 60.0,
) -> str:
    """Stream `url` to `dest` through `dest.part`, resuming a previous part; return the sha256.

    The part file is resumed with an HTTP Range request (a server that ignores Range makes us start
    over), checked against `sha256` when given, and renamed into place only when complete. A web
    page (by Content-Type or by its first bytes) and a file far smaller than `expected_size` are
    refused: that is what dead mirrors and login walls send.
    """
    from tqdm import tqdm

    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    source = dest.with_name(dest.name + ".part.url")
    if part.is_file() and (not source.is_file() or source.read_text(encoding="utf-8") != url):
        # A part from another mirror may hold other bytes; never splice two sources together.
        part.unlink()
    offset = part.stat().st_size if part.is_file() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        e.close()  # the error holds the open response
        if e.code == 416 and offset:
            # Our part is not a prefix the server can continue (larger or complete): start over.
            log.info("server refused to resume %s (HTTP 416); starting over", url)
            part.unlink()
            return download(url, dest, sha256, progress, expected_size=expected_size, timeout=timeout)
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"could not reach {url}: {reason}", hint="check the network and retry") from e

    with resp:
        resumed = offset > 0 and resp.status == 206
        if offset and not resumed:
            log.info("server ignored the Range request for %s; starting over", url)
            offset = 0
        if "text/html" in (resp.headers.get("Content-Type") or ""):
            raise DownloadError(
                f"{url} returned a web page instead of {dest.name} (a quota, login or confirmation page)",
                hint=f"download the file in a browser and save it as {dest}",
            )
        length = resp.headers.get("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        need = (
            remaining
            if remaining is not None
            else (max(expected_size - offset, 0) if expected_size else None)
        )
        free = shutil.disk_usage(dest.parent).free
        if need is not None and free < need:
            raise DownloadError(
                f"not enough disk space for {dest.name}: it needs {human_size(need)}, "
                f"{human_size(free)} is free in {dest.parent}",
                hint="free some space or choose another --cache-dir",
            )
        try:
            first = resp.read(_CHUNK)
        except OSError as e:
            raise DownloadError(f"download of {url} failed at its first bytes ({e})") from e
        if not offset and looks_like_html_bytes(first):
            # Checked before the part file is opened: a page never replaces a good part.
            raise DownloadError(
                f"{url} returned a web page instead of {dest.name} "
                "(sent as a file, but it starts like HTML: an error or login page)",
                hint=f"download the file in a browser and save it as {dest}",
            )
        if remaining is not None:
            _check_size(url, dest.name, offset + remaining, expected_size)
        hasher = hashlib.sha256()
        if resumed:
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK):
                    hasher.update(chunk)
        if not resumed:
            source.write_text(url, encoding="utf-8")
        written = 0
        total = offset + remaining if remaining is not None else None
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=dest.name,
            disable=not progress,
            leave=False,
        )
        try:
            with open(part, "ab" if resumed else "wb") as out, bar:
                chunk = first
                while chunk:
                    out.write(chunk)
                    hasher.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
                    chunk = resp.read(_CHUNK)
        except OSError as e:
            raise DownloadError(
                f"download of {url} was interrupted after {human_size(offset + written)} ({e})",
                hint="run the same command again to resume",
            ) from e
    if remaining is not None and written != remaining:
        raise DownloadError(
            f"download of {url} ended early: got {written} of {remaining} bytes",
            hint="run the same command again to resume",
        )
    if remaining is None:
        try:
            _check_size(url, dest.name, offset + written, expected_size)
        except DownloadError:
            part.unlink(missing_ok=True)
            source.unlink(missing_ok=True)
            raise
    digest = hasher.hexdigest()
    if sha256 and digest != sha256.lower():
        part.unlink(missing_ok=True)
        source.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {dest.name} from {url}: expected sha256 {sha256.lower()}, got {digest}",
            hint="the download was deleted; retry, or report the mirror if it keeps happening",
        )
    os.replace(part, dest)
    source.unlink(missing_ok=True)
    return digest
