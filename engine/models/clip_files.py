"""Every CLIP ViT-B/32 file on disk: SpookyGAN's cache, the Hugging Face hub cache, OpenAI's cache."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.models.registry import REGISTRY

#: open_clip's `openai` ViT-B-32 weights inside a Hugging Face hub cache, newest format first.
OPEN_CLIP_HF_REPO_DIR = "models--timm--vit_base_patch32_clip_224.openai"
OPEN_CLIP_HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class FoundFile:
    """A CLIP file found on disk, where it was found, and the digest it must have if one is known."""

    path: Path
    where: str
    sha256: str | None  # OpenAI's published digest, or the name of a Hugging Face blob
    entry: str  # the registry entry it is a copy of


def hf_hub_cache(env: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it (HF_HUB_CACHE, then HF_HOME)."""
    env = os.environ if env is None else env
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return xdg / "huggingface" / "hub"


def _hf_snapshot_files(hub: Path) -> list[Path]:
    repo = hub / OPEN_CLIP_HF_REPO_DIR
    ref = repo / "refs" / "main"
    snapshots = []
    if ref.is_file():
        snapshots.append(repo / "snapshots" / ref.read_text(encoding="utf-8").strip())
    snapshots += sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [snap / name for snap in dict.fromkeys(snapshots) for name in OPEN_CLIP_HF_FILES]


def hf_blob_digest(path: Path) -> str | None:
    """The sha256 a file in a Hugging Face cache must have: huggingface_hub stores a large (LFS)
    file as `blobs/<its sha256>` and links the snapshot's file name to it."""
    resolved = path.resolve()
    name = resolved.name
    is_hex = len(name) == 64 and all(c in "0123456789abcdef" for c in name)
    return name if is_hex and resolved.parent.name == "blobs" else None


def find_clip_files(cache_dir: Path, env: Mapping[str, str] | None = None) -> list[FoundFile]:
    """Every CLIP ViT-B/32 file on disk, in the order the loader prefers them.

    SpookyGAN's cache (its two registry files, and open_clip's layout inside it), the Hugging Face
    hub cache that open_clip downloads to, then `~/.cache/clip` where OpenAI's `clip.load` (and
    open_clip before it used the hub) leaves `ViT-B-32.pt`.
    """
    cache_dir = Path(cache_dir).expanduser()
    ours, theirs = "clip_vit_b_32", "clip_vit_b_32_openai"
    openai = REGISTRY[theirs].files[0]
    candidates: list[tuple[Path, str, str | None, str]] = [
        (cache_dir / REGISTRY[ours].files[0].filename, "SpookyGAN cache", None, ours),
        (cache_dir / openai.filename, "SpookyGAN cache (OpenAI's file)", openai.sha256, theirs),
    ]
    hubs = (("open_clip layout in the SpookyGAN cache", cache_dir), ("Hugging Face cache", hf_hub_cache(env)))
    for where, hub in hubs:
        candidates += [(p, where, None, ours) for p in _hf_snapshot_files(hub)]
    home_clip = Path.home() / ".cache" / "clip" / openai.filename
    candidates.append((home_clip, "OpenAI clip cache", openai.sha256, theirs))
    found, seen = [], set()
    for path, where, digest, entry in candidates:
        if path.is_file() and path.resolve() not in seen:
            seen.add(path.resolve())
            found.append(FoundFile(path, where, digest or hf_blob_digest(path), entry))
    return found
