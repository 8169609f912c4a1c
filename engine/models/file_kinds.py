"""What a file is, told by its first bytes: a web page or a TorchScript archive."""

from __future__ import annotations

import zipfile
from pathlib import Path

_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<!--")


def looks_like_html_bytes(head: bytes) -> bool:
    """True when `head` (a file's first bytes) starts like a web page."""
    return head[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_HTML_STARTS)


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (`torch.jit.save`): a zip with compiled code next to `data.pkl`."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())
