"""3x3 convolutions of the frozen VQGAN decoder as Winograd convolutions on the CPU (NNPACK).

oneDNN, PyTorch's CPU convolution, computes 3x3 convolutions directly: 9 multiply-adds per
output and input channel. NNPACK, which PyTorch ships, computes them with Winograd's minimal
filtering algorithm, which needs far fewer multiplications for the same sums; on this project's
CPU (AVX-512, 2 cores) its forward takes 0.57-0.73x oneDNN's time on the decoder's shapes, with
a relative difference of 2e-5 (`python benchmarks/bench_pipeline.py --device cpu --decoder-check`).
PyTorch itself only picks NNPACK for batches of 16 or more, never for a decoder's single image.

A step needs the decoder's input gradient, not its weight gradient (the VQGAN is frozen), and
for a stride-1, padding-1 3x3 convolution that gradient is itself a 3x3 convolution of the
output gradient with the kernel turned by 180 degrees and its channel axes swapped, so the
backward pass runs on NNPACK too. Anything else (weights that train, channels_last, bf16, a
GPU, a `torch.compile` trace) takes `conv(x)` unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def available() -> bool:
    """Whether this PyTorch build has NNPACK and this CPU can run it."""
    return bool(getattr(torch, "_nnpack_available", lambda: False)())


_AVAILABLE = available()


def conv3x3(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """`conv(x)`, on NNPACK for a frozen 3x3, stride 1, padding 1 convolution of fp32 NCHW CPU input."""
    if not _applies(conv, x):
        return conv(x)
    return _WinogradConv.apply(x, conv.weight, conv.bias)


def _applies(conv: nn.Conv2d, x: Tensor) -> bool:
    return (
        _AVAILABLE
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.is_contiguous()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # NNPACK has no fake-tensor kernel; inductor picks its own
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.weight.dtype == torch.float32
        and not conv.weight.requires_grad
        and (conv.bias is None or not conv.bias.requires_grad)
    )


class _WinogradConv(torch.autograd.Function):
    """A frozen 3x3 convolution; its backward gives the input gradient only."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight)
        return torch._nnpack_spatial_convolution(x, weight, bias, [1, 1])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        turned = weight.flip(2, 3).transpose(0, 1).contiguous()
        return torch._nnpack_spatial_convolution(grad.contiguous(), turned, None, [1, 1]), None, None
