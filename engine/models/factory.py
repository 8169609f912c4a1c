"""One door to the three models: `load_models(cfg)` for the `full` or the `tiny` preset."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from engine.models import tiny
from engine.models.clip import ClipModel, load_clip
from engine.models.digests import DigestRecords, require_digest
from engine.models.families import TINY_SIZE
from engine.models.model_files import CONFIGURED, ModelFile, engine_files
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


def _check_present(files: list[ModelFile]) -> None:
    """Name every missing file at once, with the one command that fetches them all."""
    missing = [f for f in files if not f.path.is_file()]
    if missing:
        listing = "; ".join(
            f"{_label(f)}: {f.path}{' (a directory, not a file)' * f.path.is_dir()}" for f in missing
        )
        names = [f.entry for f in missing if f.entry]
        fetch = f"{_fetch_command(names)}, or " if names else ""
        raise MissingWeightsError(
            f"the full preset needs model files that are not there: {listing}",
            hint=f"{fetch}set the paths in the [models] section of config.toml; "
            "the tiny preset is for tests only",
        )


def _label(f: ModelFile) -> str:
    if f.role == "clip" and f.where != CONFIGURED:
        return f"{f.what} (open_clip state dict; none in the Hugging Face cache or ~/.cache/clip)"
    return f.what


def _check_digests(files: list[ModelFile], records: DigestRecords) -> None:
    """Refuse a file whose sha256 is not the one it must have; hashes only files that changed."""
    for f in files:
        if f.reference is not None:
            require_digest(f.path, f.reference, records, what=f.what)


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
            default_size=TINY_SIZE,
            description=f"{tiny.DESCRIPTION}, seed {cfg.tiny_seed}",
        )
    else:
        files = engine_files(cfg)
        _check_present(files)
        records = DigestRecords.in_cache(cfg.cache_dir)
        _check_digests(files, records)
        path = {f.role: f.path for f in files}
        vq_entry = next(f.entry for f in files if f.role == "vqgan_ckpt")
        vq_hint = (
            _fetch_command([vq_entry]) if vq_entry else "check models.vqgan_config and models.vqgan_ckpt"
        )
        models = Models(
            stylegan=load_stylegan2(path["stylegan2"], device),
            vqgan=load_vqgan(path["vqgan_config"], path["vqgan_ckpt"], device, fetch_hint=vq_hint),
            clip=load_clip(path["clip"], device, cfg.cache_dir.expanduser(), digests=records),
            preset="full",
            device=device,
            default_size=FULL_SIZE,
            description=FULL_DESCRIPTION.format(vqgan=vq_entry or cfg.vqgan),
        )
    log.info("models loaded on %s: %s", device, models.description)
    return models
