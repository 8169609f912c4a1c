"""One door to the three models: `load_models(cfg)` for the `full` or the `tiny` preset."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.models import tiny
from engine.models.clip import ClipModel, find_cached_clip, load_clip
from engine.models.registry import REGISTRY
from engine.models.stylegan2 import StyleGAN2Generator, load_stylegan2
from engine.models.vqgan import VQGAN, load_vqgan
from spooky.config import ModelsConfig
from spooky.errors import ConfigError, MissingWeightsError, UnknownPresetError

log = logging.getLogger(__name__)

PRESETS: tuple[str, ...] = ("full", "tiny")
FULL_SIZE: tuple[int, int] = (608, 752)  # (w, h), the original article's canvas
FULL_DESCRIPTION = "full preset: StyleGAN2 FFHQ 1024, VQGAN {vqgan}, CLIP ViT-B/32 (OpenAI)"


@dataclass
class Models:
    """The loaded models and what they are."""

    stylegan: StyleGAN2Generator
    vqgan: VQGAN
    clip: ClipModel
    preset: str  # "full" | "tiny"
    device: torch.device
    default_size: tuple[int, int]  # stage 2/3 canvas (w, h)
    description: str  # one line for logs and the CLI


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise UnknownPresetError(
            f"unknown model preset {preset!r}; allowed: {', '.join(PRESETS)}",
            hint="'full' loads the published weights, 'tiny' builds toy random models for tests",
        )
    return preset


def resolve_device(name: str) -> torch.device:
    """ "auto" -> CUDA when available, else CPU; anything else must be a device torch knows and has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"models.device {name!r} is not a torch device", hint="use auto, cpu or cuda"
        ) from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"models.device is {name!r} but CUDA is not available", hint="use auto or cpu")
    return device


def _fetch_command(names: list[str]) -> str:
    return "run `spooky weights fetch " + " ".join(dict.fromkeys(names)) + "`"


@dataclass(frozen=True)
class _FullPaths:
    stylegan2: Path
    vqgan_config: Path
    vqgan_ckpt: Path
    vqgan_name: str
    clip: Path | None  # None: looked up (our cache, Hugging Face's, ~/.cache/clip) and missing


def _full_paths(cfg: ModelsConfig) -> _FullPaths:
    cache = cfg.cache_dir.expanduser()
    stylegan2 = cfg.stylegan2 or cache / REGISTRY["stylegan2_ffhq"].files[0].filename
    if (cfg.vqgan_config is None) != (cfg.vqgan_ckpt is None):
        raise ConfigError(
            "models.vqgan_config and models.vqgan_ckpt must be set together (or both left empty)",
            hint=f"leave both empty to use the registry entry models.vqgan = {cfg.vqgan!r}",
        )
    if cfg.vqgan_config is not None and cfg.vqgan_ckpt is not None:
        vq_config, vq_ckpt, vq_name = cfg.vqgan_config, cfg.vqgan_ckpt, cfg.vqgan
    else:
        entry = REGISTRY.get(cfg.vqgan)
        if entry is None or entry.kind != "vqgan":
            known = [n for n, e in REGISTRY.items() if e.kind == "vqgan"]
            raise ConfigError(f"models.vqgan {cfg.vqgan!r} is not a known VQGAN; known: {', '.join(known)}")
        vq_config, vq_ckpt = entry.paths(cache)
        vq_name = entry.name
    clip = cfg.clip or find_cached_clip(cache)
    return _FullPaths(Path(stylegan2), Path(vq_config), Path(vq_ckpt), vq_name, clip)


def _check_present(cfg: ModelsConfig, paths: _FullPaths) -> None:
    """Name every missing file at once, with the one command that fetches them all."""
    missing: list[tuple[str, Path]] = []
    names: list[str] = []
    if not paths.stylegan2.is_file():
        missing.append(("StyleGAN2 checkpoint (rosinality .pt)", paths.stylegan2))
        names.append("stylegan2_ffhq")
    for what, p in (
        ("VQGAN config (taming model.yaml)", paths.vqgan_config),
        ("VQGAN checkpoint (taming last.ckpt)", paths.vqgan_ckpt),
    ):
        if not p.is_file():
            missing.append((what, p))
            names.append(paths.vqgan_name)
    clip = paths.clip or cfg.cache_dir.expanduser() / REGISTRY["clip_vit_b_32"].files[0].filename
    if not clip.is_file():
        what = "CLIP ViT-B-32 weights (open_clip state dict; none in the Hugging Face cache or ~/.cache/clip)"
        missing.append((what, clip))
        names.append("clip_vit_b_32")
    if missing:
        listing = "; ".join(f"{what}: {p}{' (a directory, not a file)' * p.is_dir()}" for what, p in missing)
        raise MissingWeightsError(
            f"the full preset needs model files that are not there: {listing}",
            hint=f"{_fetch_command(names)}, or set the paths in the [models] section of config.toml; "
            "the tiny preset is for tests only",
        )


def load_models(cfg: ModelsConfig, *, preset: str | None = None) -> Models:
    """Load the preset's models on the configured device; `preset` overrides `cfg.preset`.

    A missing real file is a MissingWeightsError: the tiny preset is never used in its place.
    """
    chosen = check_preset(preset if preset is not None else cfg.preset)
    device = resolve_device(cfg.device)
    if chosen == "tiny":
        models = Models(
            stylegan=tiny.tiny_stylegan(cfg.tiny_seed, device),
            vqgan=tiny.tiny_vqgan(cfg.tiny_seed, device),
            clip=tiny.tiny_clip(cfg.tiny_seed, device),
            preset="tiny",
            device=device,
            default_size=tiny.TINY_SIZE,
            description=f"{tiny.DESCRIPTION}, seed {cfg.tiny_seed}",
        )
    else:
        paths = _full_paths(cfg)
        _check_present(cfg, paths)
        vq_hint = _fetch_command([paths.vqgan_name])
        models = Models(
            stylegan=load_stylegan2(paths.stylegan2, device),
            vqgan=load_vqgan(paths.vqgan_config, paths.vqgan_ckpt, device, fetch_hint=vq_hint),
            clip=load_clip(paths.clip, device, cfg.cache_dir.expanduser()),
            preset="full",
            device=device,
            default_size=FULL_SIZE,
            description=FULL_DESCRIPTION.format(vqgan=paths.vqgan_name),
        )
    log.info("models loaded on %s: %s", device, models.description)
    return models
