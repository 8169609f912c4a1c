"""The `tiny` preset: the real three architectures at toy size, with deterministic random weights.

For tests and smoke runs on a CPU: everything is built in about a second and the images are noise.
The same seed gives the same weights, and building never disturbs the caller's random stream.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from engine.models.clip import ClipModel, build_clip_model
from engine.models.families import TINY_CLIP_CONFIG, TINY_STYLEGAN, TINY_VQGAN_CONFIG
from engine.models.stylegan2 import StyleGAN2Generator
from engine.models.vqgan import VQGAN, build_vqgan

DESCRIPTION = "tiny preset: toy-size random models (for tests and smoke runs; images are noise)"


def _sub_seed(seed: int, part: str) -> int:
    # One independent stream per model, so changing one model's init leaves the others alone.
    return (seed * 1_000_003 + zlib.crc32(part.encode("utf-8"))) % (2**63)


@contextlib.contextmanager
def _seeded(seed: int, part: str) -> Iterator[torch.Generator]:
    """Module constructors draw from the global RNG: seed it inside a fork so callers are unaffected."""
    sub = _sub_seed(seed, part)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sub)
        yield torch.Generator(device="cpu").manual_seed(sub)


def tiny_stylegan(seed: int = 0, device: str | torch.device = "cpu") -> StyleGAN2Generator:
    with _seeded(seed, "stylegan2"):
        gen = StyleGAN2Generator(**TINY_STYLEGAN)
        gen.set_latent_avg(gen.mean_latent(n=1024, seed=seed))
    return gen.to(device).eval().requires_grad_(False)


def tiny_vqgan(seed: int = 0, device: str | torch.device = "cpu") -> VQGAN:
    with _seeded(seed, "vqgan") as g:
        model = build_vqgan(TINY_VQGAN_CONFIG).eval()
        # A random codebook would sit far from what the random encoder produces, so every position
        # would snap to one or two codes and decode to a flat picture. Take the codes from
        # encodings of smooth random images instead: they span the encoder's range, and nearby
        # z values quantise to different codes, so optimising z visibly changes the image.
        low = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1  # 4 x (32/4)^2 = 256 candidate codes
        images = F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
        images = (images + 0.1 * torch.randn(images.shape, generator=g)).clamp(-1, 1)
        with torch.no_grad():
            z = model.encode(images).permute(0, 2, 3, 1).reshape(-1, model.embed_dim)
            pick = torch.randperm(z.shape[0], generator=g)[: model.n_embed]
            model.codebook.copy_(z[pick])
        model.refresh_codebook_range()
    return model.to(device).requires_grad_(False)


def tiny_clip(seed: int = 0, device: str | torch.device = "cpu") -> ClipModel:
    with _seeded(seed, "clip"):
        model = build_clip_model(model_cfg=TINY_CLIP_CONFIG)
    return ClipModel(model, device)
