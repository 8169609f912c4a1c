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
    sha256: str | None


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


def _hf_blob_digest(path: Path) -> str | None:
    # Hugging Face stores an LFS file as blobs/<its sha256> and links the snapshot name to it.
    name = path.resolve().name
    return name if len(name) == 64 and all(c in "0123456789abcdef" for c in name) else None


def find_clip_files(cache_dir: Path, env: Mapping[str, str] | None = None) -> list[FoundFile]:
    """Every CLIP ViT-B/32 file on disk, in the order the loader prefers them.

    SpookyGAN's cache (its two registry files, and open_clip's layout inside it), the Hugging Face
    hub cache that open_clip downloads to, then `~/.cache/clip` where OpenAI's `clip.load` (and
    open_clip before it used the hub) leaves `ViT-B-32.pt`.
    """
    cache_dir = Path(cache_dir).expanduser()
    ours = REGISTRY["clip_vit_b_32"].files[0]
    openai = REGISTRY["clip_vit_b_32_openai"].files[0]
    candidates: list[tuple[Path, str, str | None]] = [
        (cache_dir / ours.filename, "SpookyGAN cache", None),
        (cache_dir / openai.filename, "SpookyGAN cache (OpenAI's file)", openai.sha256),
    ]
    hubs = (("open_clip layout in the SpookyGAN cache", cache_dir), ("Hugging Face cache", hf_hub_cache(env)))
    for where, hub in hubs:
        candidates += [(p, where, None) for p in _hf_snapshot_files(hub)]
    candidates.append((Path.home() / ".cache" / "clip" / openai.filename, "OpenAI clip cache", openai.sha256))
    found, seen = [], set()
    for path, where, digest in candidates:
        if path.is_file() and path.resolve() not in seen:
            seen.add(path.resolve())
            found.append(FoundFile(path, where, digest or _hf_blob_digest(path)))
    return found
