"""sha256 of model files and the `<file>.sha256` sidecar that records the first download's digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.models.registry import WeightFile

_CHUNK = 1 << 20


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def reference_digest(wf: WeightFile, path: Path) -> str | None:
    """The digest `path` must have: the registry's, else the one recorded at first download."""
    if wf.sha256:
        return wf.sha256.lower()
    side = sidecar_path(path)
    if side.is_file():
        text = side.read_text(encoding="utf-8").split()
        return text[0].lower() if text else None
    return None


def write_sidecar(path: Path, digest: str) -> None:
    sidecar_path(path).write_text(f"{digest}  {path.name}\n", encoding="utf-8")
