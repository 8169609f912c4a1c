"""Small tensor helpers shared by the stages: freezing models, CLIP input, stills and frames."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Turn off `requires_grad` on every parameter of `modules`, and restore it on exit.

    The stages optimise a latent only; frozen weights mean autograd neither computes nor
    accumulates weight gradients and convolutions need not keep their inputs for them.
    """
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


class _ClampWithGrad(torch.autograd.Function):
    """Clamp forward; backward lets through any gradient that would move a value back inside."""

    @staticmethod
    def forward(ctx, x: Tensor, low: float, high: float) -> Tensor:  # type: ignore[override]
        ctx.low, ctx.high = low, high
        ctx.save_for_backward(x)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        # A descent step moves x by −grad: keep grad where that points toward [low, high].
        overshoot = x - x.clamp(ctx.low, ctx.high)
        return grad * (grad * overshoot >= 0), None, None


def clamp_with_grad(x: Tensor, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Clamp to [low, high] without killing the gradient of pixels that are out of range.

    A plain clamp gives such pixels zero gradient, so a decoder that overshoots can never be
    pulled back by the loss; this is VQGAN+CLIP's `ClampWithGrad`.
    """
    return _ClampWithGrad.apply(x, low, high)


class _StraightThrough(torch.autograd.Function):
    """Forward `target` exactly; backward hands the gradient to `source` unchanged."""

    @staticmethod
    def forward(ctx, source: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        return target.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


def straight_through(source: Tensor, target: Tensor) -> Tensor:
    """`target` in the forward pass, bit for bit; its gradient goes to `source` as if it were `source`.

    The usual `source + (target - source).detach()` rounds twice, so the codes it decodes are a
    hair off the codebook rows (and frame 1 is not the input's codes).
    """
    return _StraightThrough.apply(source, target.detach())


def resize_square(x: Tensor, size: int) -> Tensor:
    """Antialiased bicubic resize of [N, C, H, W] to size x size (differentiable)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


def to_still(image: Tensor) -> Tensor:
    """[1, 3, H, W] in about [-1, 1] -> detached CPU float [3, H, W] in [0, 1]."""
    return HostCopy(image.detach()[0].clamp(-1, 1).add(1).div(2).float()).result()


def to_frame(image: Tensor) -> Tensor:
    """[1, 3, H, W] in about [-1, 1] -> CPU uint8 [H, W, 3] (converted on the device, so only bytes move)."""
    return frame_copy(image).result()


def frame_copy(image: Tensor) -> HostCopy:
    """Start moving `to_frame(image)` to host memory; `.result()` is the frame."""
    x = image.detach()[0].clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return HostCopy(x.permute(1, 2, 0).contiguous())


class HostCopy:
    """A device tensor on its way to host memory, without making the host wait for it now.

    On CUDA the copy goes into pinned memory with `non_blocking` and records an event: the
    stream runs on (the backward pass queued after it), and `result()` waits for the copy only.
    On the CPU the tensor already is host memory (a fresh one, owned by the copy).
    """

    def __init__(self, x: Tensor) -> None:
        self._event: torch.cuda.Event | None = None
        if x.device.type == "cuda":
            self._host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
            self._host.copy_(x, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        elif x.device.type == "cpu":
            self._host = x
        else:
            self._host = x.to("cpu")

    def result(self) -> Tensor:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._host
