"""VQGAN decoding for the optimisation loop: taming's decoder, block by block, with two exact rewrites.

Stages 2/3 spend nearly all their time in the f16 decoder's forward and backward, so it is walked
here block by block instead of through `Decoder.forward`, which allows:

- **Sub-pixel upsampling.** taming upsamples with nearest-neighbour x2 and then a 3x3
  convolution. Every output pixel of that convolution sees only a 2x2 patch of the
  low-resolution input (three taps land on two source pixels), so the pair is one 2x2
  convolution per output phase at the low resolution, with the 3x3 weights summed into 2x2:
  the same result (up to the order of float sums) for 4/9 of the multiply-adds.
- **One-pass swish.** taming's `x * sigmoid(x)` is two element-wise passes forward and three
  backward, saving two tensors; `F.silu` is the same function in one pass each way, saving one.
- **Checkpointing** (optional). At the default canvas the plain backward keeps more activations
  than an 8 GB GPU holds next to the models (docs/operators.md); checkpointing each block
  keeps only the block boundaries and recomputes one block at a time during the backward pass:
  the same arithmetic, so the same result, for about one more decoder forward.

`vqgan.decode` (taming's own forward) stays the reference: test_stages holds this path to it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from engine.models.vqgan import VQGAN


def decode(vqgan: VQGAN, z_q: Tensor, *, checkpointed: bool = False) -> Tensor:
    """`vqgan.decode(z_q)` within float rounding.

    With `checkpointed`, trade compute for memory when z_q needs a gradient.
    """
    dec = vqgan.decoder
    if getattr(dec, "give_pre_end", False):
        raise ValueError("the pipeline's decoder does not support taming's give_pre_end decoders")
    run = _ckpt if checkpointed and torch.is_grad_enabled() and z_q.requires_grad else _call
    # Code vectors come out of the codebook lookup in NHWC strides, and every layer would carry
    # that layout on: run the decoder in the layout of its weights (`apply_layout`) instead.
    z_q = z_q.contiguous(memory_format=_layout(dec.conv_in.weight))
    # taming's Decoder.forward (taming-transformers 0.0.6); its timestep embedding is always None.
    h = run(vqgan.post_quant_conv, z_q)
    h = run(dec.conv_in, h)
    h = run(resnet_block, dec.mid.block_1, h)
    h = run(dec.mid.attn_1, h)
    h = run(resnet_block, dec.mid.block_2, h)
    for i_level in reversed(range(dec.num_resolutions)):
        level = dec.up[i_level]
        for i_block in range(dec.num_res_blocks + 1):
            h = run(resnet_block, level.block[i_block], h)
            if len(level.attn) > 0:
                h = run(level.attn[i_block], h)
        if i_level != 0:
            h = run(upsample, level.upsample, h)
    return run(_tail, dec, h)


def resnet_block(block: nn.Module, x: Tensor) -> Tensor:
    """taming's ResnetBlock.forward without a timestep embedding, with a one-pass swish."""
    h = block.conv1(F.silu(block.norm1(x)))
    h = block.conv2(block.dropout(F.silu(block.norm2(h))))
    if block.in_channels != block.out_channels:
        x = block.conv_shortcut(x) if block.use_conv_shortcut else block.nin_shortcut(x)
    return x + h


def upsample(module: nn.Module, x: Tensor) -> Tensor:
    """taming's Upsample (nearest x2, then its 3x3 convolution when it has one)."""
    if not module.with_conv:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return upsample_conv(module.conv, x)


def upsample_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """`conv(interpolate(x, scale_factor=2, mode="nearest"))` for a 3x3, stride 1, padding 1 `conv`.

    Output row 2i takes its three taps from input rows i-1, i, i (weights w0; w1 + w2) and row
    2i+1 from rows i, i, i+1 (w0 + w1; w2); columns alike. One 2x2 convolution with padding 1
    computes all four phases (a, b) at the input's resolution, phase (a, b) being output pixels
    (2i+a, 2j+b) at rows a..a+H and columns b..b+W of its (H+1) x (W+1) result; the zero padding
    of the upsampled image is the zero padding of the input.
    """
    if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1:
        raise ValueError(f"expected taming's 3x3 upsampling convolution, got {conv}")
    n, _, height, width = x.shape
    out_ch = conv.out_channels
    kernels = [col for row in _fold_taps(conv.weight, 2) for col in _fold_taps(row, 3)]
    bias = conv.bias.repeat(4) if conv.bias is not None else None
    phases = F.conv2d(x, torch.cat(kernels), bias, padding=1).unflatten(1, (2, 2, out_ch))
    layout = _layout(x)  # as the input, for cuDNN
    shape = (n, out_ch, 2 * height, 2 * width)
    out = torch.empty(shape, dtype=phases.dtype, device=phases.device, memory_format=layout)
    for a in (0, 1):
        for b in (0, 1):
            out[:, :, a::2, b::2] = phases[:, a, b, :, a : a + height, b : b + width]
    return out


def _layout(t: Tensor) -> torch.memory_format:
    """channels_last when `t` is laid out NHWC (and not also NCHW), else the contiguous format."""
    nhwc = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


def _fold_taps(weight: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """The three taps along `dim` folded to two: (w0, w1 + w2) for even outputs, (w0 + w1, w2) for odd."""
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)


def _tail(dec: nn.Module, h: Tensor) -> Tensor:
    return dec.conv_out(F.silu(dec.norm_out(h)))


def _call(fn: Callable[..., Tensor], *args: object) -> Tensor:
    return fn(*args)


def _ckpt(fn: Callable[..., Tensor], *args: object) -> Tensor:
    # Non-reentrant: works with inputs that need grad and keeps the RNG state (no dropout here).
    return checkpoint(fn, *args, use_reentrant=False)
