"""What the models a config selects are, known without loading them (no torch import).

An API node loads no models but checks every submit as a worker would (engine.service.admission):
the canvas factor of the VQGAN and the sizes of the tiny preset come from here. A worker whose
loaded VQGAN disagrees refuses to start (engine.service.app).
"""

from __future__ import annotations

from typing import Any

from engine.models.registry import REGISTRY
from spooky.config import ModelsConfig
from spooky.errors import ConfigError

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


def vqgan_factor(ddconfig: dict[str, Any]) -> int:
    """A taming VQGAN's downsampling factor: one halving per level after the first."""
    return 2 ** (len(ddconfig["ch_mult"]) - 1)


def canvas_factor(models: ModelsConfig) -> int:
    """Canvas sides must be multiples of this: the downsampling factor of the VQGAN `models`
    selects (the tiny preset's, or the registry entry's named by `[models] vqgan`)."""
    if models.preset == "tiny":
        return vqgan_factor(TINY_VQGAN_CONFIG["model"]["params"]["ddconfig"])
    entry = REGISTRY.get(models.vqgan)
    if entry is None or entry.canvas_factor is None:
        known = ", ".join(n for n, e in REGISTRY.items() if e.canvas_factor is not None)
        raise ConfigError(
            f"[models] vqgan = {models.vqgan!r} is not a VQGAN of the weights registry",
            hint=f"use one of {known} (with vqgan_config/vqgan_ckpt for files of the same architecture)",
        )
    return entry.canvas_factor
