"""Whether stages 2/3 need decoder checkpointing: the plain backward's memory against what is free.

The plain backward keeps every decoder activation it needs (gigabytes at the default canvas, half as
much in bf16: docs/operators.md); checkpointing keeps a fraction of that for more arithmetic. `auto`
measures what one step keeps on a small probe canvas, scales it to the job's canvas and cutouts,
and turns checkpointing on only when that would not fit in the memory that was free after the
models loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.models.clip import ClipModel
from engine.models.vqgan import VQGAN
from engine.pipeline.decode import decode
from engine.pipeline.precision import Precision, networks
from engine.pipeline.tensors import frozen

#: Slack over the estimate: allocator fragmentation, convolution workspaces, the optimiser.
HEADROOM = 1.25
#: Fixed reserve on top (CUDA context growth, cuDNN/cuBLAS handles, the frame buffers).
RESERVE_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class StepMemory:
    """Bytes one stage-2/3 step keeps for its backward pass, without checkpointing."""

    decoder_per_pixel: float  # decoder activations per canvas pixel
    clip_per_cutout: float  # CLIP activations per cutout

    def plain_bytes(self, size: tuple[int, int], cutouts: int) -> int:
        width, height = size
        return int(self.decoder_per_pixel * width * height + self.clip_per_cutout * cutouts)


def use_checkpointing(setting: bool | str, need_bytes: int, free_bytes: int | None) -> bool:
    """The decision: a forced true/false wins; "auto" is on unless the plain backward fits.

    `free_bytes` None (unknown) counts as not fitting, so the memory promise holds by default.
    """
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ValueError(f"decoder_checkpointing must be true, false or 'auto', got {setting!r}")
    if free_bytes is None:
        return True
    return need_bytes * HEADROOM + RESERVE_BYTES > free_bytes


def free_bytes(device: torch.device) -> int | None:
    """Free memory of `device` now: CUDA's free memory, or the system's available RAM on a CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else -1
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages > 0 else None


def measure_step_memory(vqgan: VQGAN, clip: ClipModel, precision: Precision) -> StepMemory:
    """Measure what a plain step saves for backward on probe canvases (8x8 and 12x12 latents, 2 cutouts).

    The decoder's cost per pixel is the difference between the two probes: what does not grow
    with the canvas (the upsampling's folded kernels) is left to RESERVE_BYTES.
    """
    device = next(vqgan.parameters()).device
    # Weights are saved for the input gradient too, but they are resident anyway: not per step.
    weights = {t.untyped_storage().data_ptr() for m in (vqgan, clip.model) for t in m.state_dict().values()}

    def decoder_bytes(side: int) -> int:
        z = vqgan.codebook[:1].detach().view(1, -1, 1, 1).expand(1, -1, side, side).clone()
        return _saved_bytes(lambda: decode(vqgan, z.requires_grad_(True)), weights)

    small, large = 8, 12
    # Frozen as in a step: what autograd keeps can depend on it.
    with frozen(vqgan, clip.model), networks(precision, device):
        grown = decoder_bytes(large) - decoder_bytes(small)
        cuts = torch.zeros(2, 3, clip.image_size, clip.image_size, device=device, requires_grad=True)
        per_cut = _saved_bytes(lambda: clip.encode_image(cuts), weights) / 2
    pixels = (large**2 - small**2) * vqgan.factor**2
    return StepMemory(decoder_per_pixel=grown / pixels, clip_per_cutout=per_cut)


def _saved_bytes(fn, exclude: set[int]) -> int:  # type: ignore[no-untyped-def]
    """Bytes of the distinct tensors autograd saves while `fn()` runs (its graph is then dropped)."""
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())
