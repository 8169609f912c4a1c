"""Arithmetic precision of the stages: fp32, TF32 matmuls/convolutions, or bf16 autocast.

Only the networks run in reduced precision (the StyleGAN2 synthesis, the VQGAN decoder and CLIP);
the latent being optimised, Adam's state and the loss stay fp32, so a step's update is computed at
full precision from a slightly rounded gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

Precision = Literal["fp32", "tf32", "bf16"]
PrecisionSetting = Literal["auto", "fp32", "tf32", "bf16"]


def resolve_precision(
    setting: PrecisionSetting, device_type: str, capability: tuple[int, int] | None = None
) -> Precision:
    """The precision a setting means on a device; `capability` is CUDA's (major, minor).

    "auto" is the fastest one that keeps quality: bf16 on CUDA GPUs with bf16 tensor cores
    (Ampere, sm 8.0, and later), TF32 is not available before them so fp32 there, and fp32 on the
    CPU (bf16 matmuls on a CPU without AMX are slower than fp32, and TF32 does not exist there).
    An explicit setting is honoured, except that TF32 means fp32 off CUDA.
    """
    if setting == "auto":
        if device_type == "cuda" and capability is not None and capability >= (8, 0):
            return "bf16"
        return "fp32"
    if setting == "tf32" and device_type != "cuda":
        return "fp32"
    return setting


def device_precision(setting: PrecisionSetting, device: torch.device) -> Precision:
    """`resolve_precision` for a real device (asks CUDA for its compute capability)."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return resolve_precision(setting, device.type, capability)


@contextlib.contextmanager
def tf32_allowed(precision: Precision) -> Iterator[None]:
    """Allow TF32 matmuls and cuDNN convolutions for the block (restored on exit).

    PyTorch leaves matmuls in full fp32 by default, so CLIP's linear layers would otherwise run
    on the slow fp32 path; bf16 enables TF32 too for the few ops autocast keeps in fp32.
    """
    if precision == "fp32":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def networks(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Around a network's forward pass: bf16 autocast for "bf16", nothing otherwise.

    The backward pass follows the forward's dtypes, so it needs no context of its own.
    """
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
