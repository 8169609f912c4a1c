"""What is at a model file's path: nothing, a directory, an empty file, a web page, a TorchScript archive."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

from spooky.errors import CorruptWeightsError, MissingWeightsError

_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<!--")


def looks_like_html_bytes(head: bytes) -> bool:
    """True when `head` (a file's first bytes) starts like a web page."""
    return head[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_HTML_STARTS)


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (`torch.jit.save`): a zip with compiled code next to `data.pkl`.

    A zip that Python cannot open counts as no archive: torch's reader then refuses it too, and in
    weights-only mode torch refuses any TorchScript archive it does open.
    """
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error, NotImplementedError):
        return False


def check_model_file(path: Path, what: str, fetch_hint: str, *, expected: str = "") -> None:
    """Refuse a path that holds no model file, saying what is there instead.

    `what` names the file for messages ("StyleGAN2 checkpoint"), `fetch_hint` says how to get it and
    `expected` (optional) what kind of file belongs there.
    """
    if path.is_dir():
        raise MissingWeightsError(
            f"{what} at {path} is a directory, not a file",
            hint=f"point the setting at the model file inside it, or remove the directory; {fetch_hint}",
        )
    if not path.exists():
        detail = f" (expected {expected})" if expected else ""
        if path.is_symlink():
            detail = f": it is a link to {os.readlink(path)}, which does not exist{detail}"
        raise MissingWeightsError(f"{what} not found: {path}{detail}", hint=fetch_hint)
    if not path.is_file():
        raise CorruptWeightsError(
            f"{what} at {path} is not a regular file (a pipe, socket or device)", hint=fetch_hint
        )
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise CorruptWeightsError(
            f"{what} at {path} cannot be read ({type(e).__name__}: {e.strerror or e})",
            hint=f"check that the engine's user may read it; {fetch_hint}",
        ) from e
    if size == 0:
        raise CorruptWeightsError(
            f"{what} at {path} is an empty file (0 bytes)",
            hint=f"an interrupted copy or download leaves one; delete it, then {fetch_hint}",
        )
    if looks_like_html_bytes(head):
        raise CorruptWeightsError(
            f"{what} at {path} is a web page ({size} bytes of HTML), not the model file: "
            "the mirror it came from returned an error, login or quota page",
            hint=f"delete it and download the file again; {fetch_hint}",
        )
