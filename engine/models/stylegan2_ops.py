"""FIR filtering for StyleGAN2 in plain PyTorch ops (rosinality's `upfirdn2d` cases we need).

rosinality's `upfirdn2d(x, k, up, down, pad)` zero-stuffs, pads, then *convolves* (flipped kernel)
with a 2-D FIR. The generator only uses two cases, both with the 4x4 kernel
`outer([1,3,3,1]) / 16` (`make_kernel([1,3,3,1]) * 2**2`):

* blur after the transposed up-sampling conv: up=1, pad=(1,1);
* the ToRGB skip up-sampling: up=2, pad=(2,1).

Both map onto one depthwise conv each (no explicit zero-stuffing), which also runs on CUDA and
under autocast as they are.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def fir_kernel_2d(taps: Sequence[float] = (1.0, 3.0, 3.0, 1.0), gain: float = 4.0) -> Tensor:
    """Separable 2-D FIR `outer(taps, taps)` normalised to sum `gain` (rosinality `make_kernel * gain`)."""
    t = torch.tensor(list(taps), dtype=torch.float32)
    k = t[:, None] * t[None, :]
    return k / k.sum() * gain


def _depthwise(kernel: Tensor, channels: int, like: Tensor) -> Tensor:
    return kernel.to(dtype=like.dtype, device=like.device).expand(channels, 1, *kernel.shape)


def blur(x: Tensor, kernel: Tensor, pad: tuple[int, int], bias: Tensor | None = None) -> Tensor:
    """`upfirdn2d(x, kernel, up=1, down=1, pad=pad)` on both axes (+ `bias` [C]): a depthwise conv,
    not rosinality's reshape to one-channel images (slower on CPU)."""
    p0, p1 = pad
    if p0 != p1:
        x = F.pad(x, (p0, p1, p0, p1))
        p0 = 0
    # upfirdn2d convolves, F.conv2d correlates: flip the kernel (a no-op for symmetric kernels).
    weight = _depthwise(kernel.flip(0, 1), x.shape[1], x)
    return F.conv2d(x, weight, bias=bias, padding=p0, groups=x.shape[1])


def _polyphase_taps(kernel: Tensor) -> Tensor:
    """The four 3x3 phase kernels [4, 1, 3, 3] of `upsample2x` for a 4x4 FIR, in pixel_shuffle order.

    1-D, with zero-stuffing, pad (2, 1) and a true convolution: out[2m] = k[3] x[m-1] + k[1] x[m]
    and out[2m+1] = k[2] x[m] + k[0] x[m+1]. So, on x padded by one, a 3-tap window at m with taps
    (k3, k1, 0) gives the even outputs and (0, k2, k0) the odd ones.
    """
    if tuple(kernel.shape) != (4, 4):
        raise ValueError(
            f"upsample2x supports a 4x4 FIR (rosinality's default [1,3,3,1]), got {list(kernel.shape)}"
        )
    padded = F.pad(kernel, (0, 1, 0, 1))  # index 4 reads a zero tap
    # Taps (3, 1, 4) and (4, 2, 0) along each axis, by slicing: an index tensor built from a Python
    # list would be a host-to-device copy (a stream sync on CUDA) on every call.
    rows = torch.stack([_phase_taps(padded, 0, even) for even in (True, False)])  # [2, 3, 5]
    taps = torch.stack([_phase_taps(rows, 2, even) for even in (True, False)], dim=1)  # [2, 2, 3, 3]
    return taps.reshape(4, 1, 3, 3)


def _phase_taps(padded: Tensor, dim: int, even: bool) -> Tensor:
    """Along `dim` of a zero-padded 5-tap axis (k0..k3, 0): (k3, k1, 0) if `even` else (0, k2, k0)."""
    flipped = padded.flip(dim)  # (0, k3, k2, k1, k0)
    if not even:
        return _every_other(flipped, dim, 0)
    return torch.cat([_every_other(flipped, dim, 1), padded.narrow(dim, 4, 1)], dim=dim)


def _every_other(x: Tensor, dim: int, start: int) -> Tensor:
    index = [slice(None)] * x.dim()
    index[dim] = slice(start, None, 2)
    return x[tuple(index)]


#: Polyphase weights per FIR kernel buffer (by id, dropped when the buffer is freed), per
#: (channels, dtype, device, version): built once, so each ToRGB skip up-sampling is one conv.
_TAPS_CACHE: dict[int, dict[tuple[object, ...], Tensor]] = {}


def _polyphase_weight(kernel: Tensor, channels: int, like: Tensor) -> Tensor:
    per_kernel = _TAPS_CACHE.get(id(kernel))
    if per_kernel is None:
        per_kernel = _TAPS_CACHE[id(kernel)] = {}
        weakref.finalize(kernel, _TAPS_CACHE.pop, id(kernel), None)
    key = (channels, like.dtype, like.device, kernel._version)
    weight = per_kernel.get(key)
    if weight is None:
        for stale in [k for k in per_kernel if k[3] != kernel._version]:  # the kernel was changed
            del per_kernel[stale]
        with torch.no_grad():
            taps = _polyphase_taps(kernel).to(dtype=like.dtype, device=like.device)
            weight = taps.repeat(channels, 1, 1, 1)
        per_kernel[key] = weight
    return weight


def upsample2x(x: Tensor, kernel: Tensor) -> Tensor:
    """`upfirdn2d(x, kernel, up=2, pad=(2, 1))` (rosinality `Upsample`), output 2H x 2W.

    Computed polyphase: one depthwise 3x3 conv with four outputs per channel at the input
    resolution, interleaved by pixel_shuffle. No zero-stuffed tensor and 9 instead of 16 taps per
    output.
    """
    c = x.shape[1]
    weight = _polyphase_weight(kernel, c, x)
    return F.pixel_shuffle(F.conv2d(x, weight, padding=1, groups=c), 2)
