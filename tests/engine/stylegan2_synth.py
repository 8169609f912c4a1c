"""Rebuild the synthetic StyleGAN2 weights of `tests/golden/stylegan2/` (README section 3).

Every tensor is a function of its key name and shape only: N(0, 1) drawn in float64 from a CPU
generator seeded with the key's CRC-32 (float64 because CPU float32 `randn` has an AVX2-only path
with different last bits), scaled by a per-kind rule, rounded to float32 once. The same rule
gives deterministic, well-scaled weights for any rosinality key layout, so the tests also use it
to fill toy-size generators.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden" / "stylegan2"

MAPPING_LR_MUL = 0.01  # stored mapping weights are the effective ones / lr_mul
TORGB_GAIN = 0.25  # keeps the summed RGB output around std 0.3-0.6


def draw(key: str, shape: Sequence[int]) -> Tensor:
    """float64 N(0, 1) seeded by the CRC-32 of `key`."""
    g = torch.Generator(device="cpu").manual_seed(zlib.crc32(key.encode("utf-8")))
    return torch.randn(list(shape), generator=g, dtype=torch.float64)


def rule(key: str) -> str:
    """The README's name for how `key` is made."""
    leaf = key.rsplit(".", 1)[-1]
    checks = [
        (leaf == "kernel", "fir_kernel"),
        (key.startswith("noises."), "noise_buffer"),
        (key.startswith("style."), f"mapping_{leaf}"),
        (key in ("input.input", "latent_avg"), "as_drawn"),
        (key.endswith("conv.modulation.weight"), "as_drawn"),
        (key.endswith("conv.modulation.bias"), "modulation_bias"),
        (key.endswith("conv.weight") and key.startswith("to_rgb"), "torgb_weight"),
        (key.endswith("conv.weight"), "as_drawn"),
        (key.endswith("noise.weight") or leaf == "bias", "times_0.1"),
    ]
    for matches, name in checks:
        if matches:
            return name
    raise KeyError(f"no synthetic-weight rule for {key!r}")


def make_tensor(key: str, shape: Sequence[int]) -> Tensor:
    """The float32 tensor the golden procedure assigns to `key`."""
    kind = rule(key)
    if kind == "fir_kernel":  # constant, not drawn
        taps = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
        return (torch.outer(taps, taps) / 16.0).reshape(list(shape)).to(torch.float32)
    x = draw(key, shape)
    scale = {
        "mapping_weight": lambda t: t / MAPPING_LR_MUL,
        "mapping_bias": lambda t: t * 10.0,
        "modulation_bias": lambda t: 1.0 + 0.1 * t,
        "torgb_weight": lambda t: t * TORGB_GAIN,
        "times_0.1": lambda t: 0.1 * t,
    }.get(kind)
    if scale is not None:
        x = scale(x)
    return x.to(torch.float32)


def sha256_of(t: Tensor) -> str:
    """SHA-256 of a float32 tensor's little-endian C-order bytes (the JSON's fingerprint)."""
    return hashlib.sha256(t.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def load_spec(name: str) -> dict:
    """keys_shapes_{name}.json as a dict."""
    return json.loads((GOLDEN_DIR / f"keys_shapes_{name}.json").read_text())


def make_checkpoint(spec: dict) -> dict[str, object]:
    """{'g_ema': ordered state dict, 'latent_avg': [style_dim]} in rosinality's layout."""
    g_ema = {e["key"]: make_tensor(e["key"], e["shape"]) for e in spec["g_ema"]}
    return {"g_ema": g_ema, "latent_avg": make_tensor("latent_avg", spec["latent_avg"]["shape"])}


def synthetic_state_dict(layout: dict[str, Tensor]) -> dict[str, Tensor]:
    """Golden-procedure values for every key of an existing state dict (any size)."""
    return {k: make_tensor(k, v.shape) for k, v in layout.items()}
