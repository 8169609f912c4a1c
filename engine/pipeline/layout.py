"""Memory layout of the VQGAN: channels_last (NHWC), where it is faster, by default everywhere.

cuDNN's tensor-core convolutions work in NHWC, so NCHW on a GPU costs a layout transpose around
every convolution in bf16/TF32. On this project's CPU (oneDNN, AVX-512 without AMX) the decoder's
forward + backward at 608x752 takes 0.92x the NCHW time in NHWC (20.3 s against 22.0 s,
`python benchmarks/bench_layout.py --device cpu`). An earlier 256x256 measurement
said otherwise, but both of its arms ran NHWC activations (the codebook lookup yields NHWC
strides and every layer kept them); the decoder now runs in its weights' layout
(engine.pipeline.decode). The layout changes no value beyond the order of float sums.
"""

from __future__ import annotations

from typing import Literal

import torch

from engine.models.vqgan import VQGAN

LayoutSetting = bool | Literal["auto"]


def use_channels_last(setting: LayoutSetting) -> bool:
    """The decision: a forced true/false wins; "auto" is channels_last (faster on CUDA and the CPU)."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ValueError(f"channels_last must be true, false or 'auto', got {setting!r}")
    return True


def apply_layout(vqgan: VQGAN, channels_last: bool) -> None:
    """Put the VQGAN's 4-D weights (encoder, decoder, 1x1 convs) in the chosen layout, in place.

    The StyleGAN2 synthesis is left alone: its modulated weights are rebuilt from 5-D parameters
    on every forward, so a module-wide conversion would not reach the convolutions.
    """
    vqgan.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
