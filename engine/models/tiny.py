"""The `tiny` preset: the real three architectures at toy size, with deterministic random weights.

For tests and smoke runs on a CPU: everything is built in about a second and the images are noise.
The same seed gives the same weights, and building never disturbs the caller's random stream.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from engine.models.clip import ClipModel, build_clip_model
from engine.models.stylegan2 import StyleGAN2Generator
from engine.models.vqgan import VQGAN, build_vqgan

#: StyleGAN2Generator arguments: 32 px, 6 W+ rows of 64.
TINY_STYLEGAN: dict[str, int] = {
    "size": 32,
    "style_dim": 64,
    "n_mlp": 2,
    "channel_multiplier": 1,
    "channel_max": 32,
}
#: A taming yaml (as parsed) for an f4 VQGAN with 64 codes of 16 dims.
TINY_VQGAN_CONFIG: dict[str, Any] = {
    "model": {
        "target": "taming.models.vqgan.VQModel",
        "params": {
            "embed_dim": 16,
            "n_embed": 64,
            "ddconfig": {
                "double_z": False,
                "z_channels": 16,
                "resolution": 64,
                "in_channels": 3,
                "out_ch": 3,
                "ch": 32,
                "ch_mult": [1, 2, 2],
                "num_res_blocks": 1,
                "attn_resolutions": [],
                "dropout": 0.0,
            },
        },
    }
}
#: open_clip CLIP arguments: 32 px images in 8 px patches, 2-layer towers, OpenAI's tokenizer.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
#: Stage 2/3 canvas (w, h) of the tiny preset.
TINY_SIZE: tuple[int, int] = (64, 64)
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
