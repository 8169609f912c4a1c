"""Memory layout of the VQGAN: channels_last (NHWC), where it is faster, by default everywhere.

cuDNN's tensor-core convolutions work in NHWC, so NCHW on a GPU costs a layout transpose around
every convolution in bf16/TF32. On the project's CPU (oneDNN) the decoder is a little faster in
NHWC too (`python benchmarks/bench_layout.py --device cpu`; docs/operators.md). The decoder runs
in its weights' layout (engine.pipeline.decode): the codebook lookup yields NHWC strides, which
would otherwise be carried through every layer whatever the weights are. The layout changes no
value beyond the order of float sums.
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
