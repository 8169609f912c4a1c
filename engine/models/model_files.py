"""Which file the engine loads for each model, and the digest that file must have (no torch import)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.models.clip_files import FoundFile, find_clip_files, hf_blob_digest
from engine.models.digests import Reference, read_sidecar, sidecar_path
from engine.models.file_kinds import is_torchscript
from engine.models.registry import REGISTRY, WeightsEntry
from spooky.config import ModelsConfig
from spooky.errors import ConfigError

#: The [models] setting each model file fills, and what it is (for messages).
ROLES: dict[str, str] = {
    "stylegan2": "StyleGAN2 checkpoint (rosinality .pt)",
    "vqgan_config": "VQGAN config (taming model.yaml)",
    "vqgan_ckpt": "VQGAN checkpoint (taming last.ckpt)",
    "clip": "CLIP ViT-B-32 weights",
}
CLIP_ENTRIES = ("clip_vit_b_32", "clip_vit_b_32_openai")  # open_clip's state dict, OpenAI's TorchScript
CONFIGURED = "named in [models]"
CACHE = "SpookyGAN cache"


@dataclass(frozen=True)
class ModelFile:
    """One model file as the engine would use it: where it is and the digest it must have."""

    role: str  # a key of ROLES
    entry: str  # the registry entry it is a copy of; "" for a VQGAN named only by its files
    path: Path
    where: str  # CACHE, CONFIGURED, "Hugging Face cache", ...
    reference: Reference | None  # None: no digest is published or was recorded for it

    @property
    def what(self) -> str:
        return ROLES[self.role]


def reference_for(path: Path, *, entry: str, role: str, where: str) -> Reference | None:
    """The digest `path` must have: the one published for `entry`'s file, else its sidecar's, else
    the name of the Hugging Face blob it is; None when there is none."""
    fetch = f"run `spooky weights fetch {entry}`" if entry in REGISTRY else "download it again"
    published = _published(entry, role)
    if published:
        return Reference(
            published,
            "the published digest is",
            f"it is not the published file: delete it and {fetch}, or point models.{role} at another copy",
        )
    recorded = read_sidecar(path)
    if recorded:
        side = sidecar_path(path).name
        if where == CONFIGURED:
            fix = f"point models.{role} at the right file; if this copy is the one you mean, delete {side}"
        else:
            fix = f"{fetch} to download it again; if you replaced the file on purpose, delete {side}"
        return Reference(recorded, f"its sidecar {side} (written when it was downloaded) says", fix)
    blob = hf_blob_digest(path)
    if blob:
        return Reference(
            blob,
            "the name of its Hugging Face blob says",
            f"delete {path.resolve()} so that huggingface_hub downloads it again, or {fetch} "
            "(the SpookyGAN cache is looked in first)",
        )
    return None


def _published(entry: str, role: str) -> str | None:
    registry_entry = REGISTRY.get(entry)
    if registry_entry is None:
        return None
    wf = registry_entry.files[1 if role == "vqgan_ckpt" else 0]
    return wf.sha256.lower() if wf.sha256 else None


def _roles(entry: WeightsEntry) -> list[str]:
    """The [models] setting each file of `entry` fills."""
    return {"stylegan2": ["stylegan2"], "vqgan": ["vqgan_config", "vqgan_ckpt"]}.get(entry.kind, ["clip"])


def _file(role: str, entry: str, path: Path, where: str) -> ModelFile:
    path = Path(path).expanduser()
    return ModelFile(role, entry, path, where, reference_for(path, entry=entry, role=role, where=where))


def clip_copy(found: FoundFile) -> ModelFile:
    """A CLIP file found on disk as the loader would use it."""
    return _file("clip", found.entry, found.path, found.where)


def _clip_entry_of(path: Path) -> str:
    """Which CLIP entry a file is a copy of: OpenAI's when it is a TorchScript archive."""
    path = Path(path).expanduser()
    return CLIP_ENTRIES[1] if path.is_file() and is_torchscript(path) else CLIP_ENTRIES[0]


def engine_files(cfg: ModelsConfig, env: Mapping[str, str] | None = None) -> list[ModelFile]:
    """The four files the full preset loads: those [models] names, else the cache's (CLIP: the first
    found in the SpookyGAN, Hugging Face and OpenAI caches). A missing one is listed where it would
    be downloaded to."""
    cache = cfg.cache_dir.expanduser()
    sg_entry = REGISTRY["stylegan2_ffhq"]
    if cfg.stylegan2 is not None:
        files = [_file("stylegan2", sg_entry.name, cfg.stylegan2, CONFIGURED)]
    else:
        files = [_file("stylegan2", sg_entry.name, cache / sg_entry.files[0].filename, CACHE)]
    if (cfg.vqgan_config is None) != (cfg.vqgan_ckpt is None):
        raise ConfigError(
            "models.vqgan_config and models.vqgan_ckpt must be set together (or both left empty)",
            hint=f"leave both empty to use the registry entry models.vqgan = {cfg.vqgan!r}",
        )
    vq_entry = REGISTRY.get(cfg.vqgan)
    if cfg.vqgan_config is not None and cfg.vqgan_ckpt is not None:
        name = cfg.vqgan if vq_entry is not None and vq_entry.kind == "vqgan" else ""
        files += [
            _file("vqgan_config", name, cfg.vqgan_config, CONFIGURED),
            _file("vqgan_ckpt", name, cfg.vqgan_ckpt, CONFIGURED),
        ]
    else:
        if vq_entry is None or vq_entry.kind != "vqgan":
            known = [n for n, e in REGISTRY.items() if e.kind == "vqgan"]
            raise ConfigError(f"models.vqgan {cfg.vqgan!r} is not a known VQGAN; known: {', '.join(known)}")
        config_path, ckpt_path = vq_entry.paths(cache)
        files += [
            _file("vqgan_config", vq_entry.name, config_path, CACHE),
            _file("vqgan_ckpt", vq_entry.name, ckpt_path, CACHE),
        ]
    if cfg.clip is not None:
        files.append(_file("clip", _clip_entry_of(cfg.clip), cfg.clip, CONFIGURED))
    else:
        found = find_clip_files(cache, env)
        if found:
            files.append(clip_copy(found[0]))
        else:
            default = REGISTRY[CLIP_ENTRIES[0]]
            files.append(_file("clip", default.name, cache / default.files[0].filename, CACHE))
    return files


def copies(
    entry: WeightsEntry, cfg: ModelsConfig, env: Mapping[str, str] | None = None
) -> list[list[ModelFile]]:
    """Per file of `entry`, every copy of it on disk in the order the loader prefers them (the one
    [models] names, the cache's, for CLIP those other tools downloaded); a file with no copy
    anywhere is one missing copy, in the cache."""
    cache = cfg.cache_dir.expanduser()
    configured: list[Path | None] = [None] * len(entry.files)
    if entry.kind == "stylegan2":
        configured = [cfg.stylegan2]
    elif entry.kind == "vqgan" and entry.name == cfg.vqgan and cfg.vqgan_config is not None:
        configured = [cfg.vqgan_config, cfg.vqgan_ckpt]
    elif entry.kind == "clip" and cfg.clip is not None and _clip_entry_of(cfg.clip) == entry.name:
        configured = [cfg.clip]
    found = find_clip_files(cache, env) if entry.kind == "clip" else []
    out = []
    for wf, mine, role in zip(entry.files, configured, _roles(entry), strict=True):
        candidates = [(Path(mine).expanduser(), CONFIGURED)] if mine is not None else []
        candidates.append((cache / wf.filename, CACHE))
        candidates += [(f.path, f.where) for f in found if f.entry == entry.name]
        seen: set[Path] = set()
        present = []
        for path, where in candidates:
            if path.is_file() and path.resolve() not in seen:
                seen.add(path.resolve())
                present.append(_file(role, entry.name, path, where))
        out.append(present or [_file(role, entry.name, cache / wf.filename, CACHE)])
    return out
