"""Memory layout of the convolutional nets: channels_last (NHWC) where it is faster.

cuDNN's tensor-core convolutions work in NHWC, so NCHW weights on a GPU cost a layout transpose
around every convolution in bf16/TF32; on this project's CPU (oneDNN, AVX-512 without AMX) the
VQGAN decoder's forward + backward at 256x256 was never faster in channels_last (1.00x and 1.13x
the NCHW time in two runs, `python benchmarks/bench_pipeline.py --device cpu --layout-check
--size 256 256`), and its Winograd convolutions (engine.pipeline.winograd) need NCHW, so "auto"
keeps the CPU in NCHW. The layout changes no value beyond the order
of float sums.
"""

from __future__ import annotations

from typing import Literal

import torch

from engine.models.vqgan import VQGAN

LayoutSetting = bool | Literal["auto"]


def use_channels_last(setting: LayoutSetting, device_type: str) -> bool:
    """The decision: a forced true/false wins; "auto" is channels_last on CUDA only."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ValueError(f"channels_last must be true, false or 'auto', got {setting!r}")
    return device_type == "cuda"


def apply_layout(vqgan: VQGAN, channels_last: bool) -> None:
    """Put the VQGAN's 4-D weights (encoder, decoder, 1x1 convs) in the chosen layout, in place.

    The StyleGAN2 synthesis is left alone: its modulated weights are rebuilt from 5-D parameters
    on every forward, so a module-wide conversion would not reach the convolutions.
    """
    vqgan.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
