"""Random augmented crops of the canvas that CLIP sees in stages 2 and 3 (VQGAN+CLIP's cutouts)."""

from __future__ import annotations

import array
import itertools
import math
import random

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Rec. 601 luma weights: the grey axis used by the saturation and contrast jitter.
_LUMA = (0.299, 0.587, 0.114)


class MakeCutouts(nn.Module):
    """`cutn` square crops of an image in [0, 1], resized to `cut_size`, then augmented.

    Crop sides are drawn as in VQGAN+CLIP, `min + (max − min)·rand^cut_pow` (a larger cut_pow
    favours small crops). Augmentations act on the whole batch at once: flip, rotation, scale,
    shift and perspective are folded into one homography per cutout and applied with a single
    `grid_sample`; brightness, saturation, hue and contrast are one colour matrix per cutout;
    then Gaussian noise of a random strength up to `noise_fac`. All randomness comes from the
    `generator` passed to `forward` (and `crops`, when given), so seeded ones give the same
    cutouts bit for bit.

    Crop sides and offsets are Python ints that index the image, so they are drawn on the host
    (`crops`, a `random.Random`): drawn on the GPU, reading them back would make the host wait
    for the decoder forward queued just before. Device constants are built once per device.

    Two ways to cut the same crops: by default each crop is sliced and pooled in a loop, so the
    shapes in between depend on the draws. With `static_shapes` (or `boxes` passed to `forward`)
    the draws become a small device tensor (side, x0, y0 per cutout) and every crop + resize is
    `A_y @ image @ A_x^T` with resampling matrices built on the device, so no shape depends on a
    draw: what a CUDA graph needs. The products add a little arithmetic to a step
    (docs/operators.md) and are slower than the loop on a CPU (benchmarks/bench_cutouts.py), where
    the loop stays the default.
    """

    def __init__(
        self,
        cut_size: int,
        cutn: int,
        cut_pow: float = 1.0,
        augment: bool = True,
        noise_fac: float = 0.1,
        *,
        flip_p: float = 0.5,
        aug_p: float = 0.7,
        degrees: float = 15.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.9, 1.1),
        perspective: float = 0.2,
        brightness: float = 0.1,
        contrast: float = 0.1,
        saturation: float = 0.1,
        hue: float = 0.05,
        static_shapes: bool = False,
    ) -> None:
        super().__init__()
        if cut_size < 1 or cutn < 1:
            raise ValueError(f"cut_size and cutn must be >= 1, got {cut_size} and {cutn}")
        # A perspective term of 0.5 or more could put the horizon inside the crop.
        if not 0 <= perspective < 0.5:
            raise ValueError(f"perspective must be in [0, 0.5), got {perspective}")
        self.cut_size = cut_size
        self.cutn = cutn
        self.cut_pow = cut_pow
        self.augment = augment
        self.noise_fac = noise_fac
        self.flip_p = flip_p
        self.aug_p = aug_p
        self.degrees = degrees
        self.translate = translate
        self.scale = scale
        self.perspective = perspective
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.static_shapes = static_shapes
        self._constants: dict[tuple[object, ...], tuple[Tensor, ...]] = {}

    def forward(
        self,
        image: Tensor,
        generator: torch.Generator | None = None,
        crops: random.Random | None = None,
        *,
        boxes: Tensor | None = None,
    ) -> Tensor:
        """[1, 3, H, W] in [0, 1] -> [cutn, 3, cut_size, cut_size] (gradients flow to `image`).

        Without `crops`, the crop draws are seeded from `generator` (one host read per call).
        `boxes` are crops drawn already (`self.boxes`), cut the static-shape way.
        """
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"expected one image [1, C, H, W], got shape {tuple(image.shape)}")
        rand = _Sampler(generator, image.device, image.dtype)
        if boxes is None:
            if crops is None:
                seed = torch.randint(2**62, (1,), generator=generator, device=rand.draw_device)
                crops = random.Random(int(seed))
            if self.static_shapes:
                boxes = self.boxes(crops, (image.shape[-2], image.shape[-1]), image.device)
        batch = self._resample(image, boxes) if boxes is not None else self._crops(image, crops)
        if self.augment:
            batch = self._warp(batch, rand)
            batch = self._jitter_colour(batch, rand)
        if self.noise_fac:
            strength = rand.uniform((self.cutn, 1, 1, 1), 0, self.noise_fac)
            batch = batch + strength * rand.normal(tuple(batch.shape))
        return batch

    def draw(self, crops: random.Random, shape: tuple[int, int]) -> list[tuple[int, int, int]]:
        """(side, x0, y0) of each of the `cutn` square crops of an (H, W) image: the one place
        crops are drawn, so both ways of cutting cut the same crops from the same stream."""
        height, width = shape
        max_size = min(height, width)
        min_size = min(height, width, self.cut_size)
        out = []
        for _ in range(self.cutn):
            u_size, u_x, u_y = crops.random(), crops.random(), crops.random()
            size = int(min_size + (max_size - min_size) * u_size**self.cut_pow)
            x0 = min(int(u_x * (width - size + 1)), width - size)
            y0 = min(int(u_y * (height - size + 1)), height - size)
            out.append((size, x0, y0))
        return out

    def boxes(
        self, crops: random.Random, shape: tuple[int, int], device: torch.device, out: Tensor | None = None
    ) -> Tensor:
        """`draw` as an int64 [cutn, 3] tensor (side, x0, y0) on `device`, written into `out` if given.

        On CUDA it goes through pinned memory without blocking: the host never waits for the
        device, and the caching host allocator keeps the pinned block until the copy has run.
        """
        flat = array.array("q", itertools.chain.from_iterable(self.draw(crops, shape)))
        host = torch.frombuffer(flat, dtype=torch.int64).view(self.cutn, 3)
        if device.type == "cuda":
            pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
            host = pinned.copy_(host)
        else:
            host = host.clone()  # owns its memory (frombuffer shares `flat`'s)
        if out is None:
            return host.to(device, non_blocking=True)
        return out.copy_(host, non_blocking=True)

    def _crops(self, image: Tensor, crops: random.Random | None) -> Tensor:
        assert crops is not None  # drawn in forward when not given
        cuts = []
        for size, x0, y0 in self.draw(crops, (image.shape[-2], image.shape[-1])):
            cut = image[:, :, y0 : y0 + size, x0 : x0 + size]
            if size >= self.cut_size:
                cut = F.adaptive_avg_pool2d(cut, self.cut_size)  # area average: no aliasing
            else:  # only when the whole image is smaller than the cut size
                cut = F.interpolate(cut, size=self.cut_size, mode="bilinear", align_corners=False)
            cuts.append(cut)
        return torch.cat(cuts)

    def _resample(self, image: Tensor, boxes: Tensor) -> Tensor:
        """The crops of `boxes` resized to the cut size as matrix products: no shape depends on them."""
        height, width = image.shape[-2:]
        side, x0, y0 = boxes.unbind(1)
        rows = _resampling_matrix(side, y0, height, self.cut_size, image.dtype)  # [n, cut, H]
        cols = _resampling_matrix(side, x0, width, self.cut_size, image.dtype)  # [n, cut, W]
        # Resampling the longer side first leaves the smaller intermediate and fewer products.
        if width > height:
            return _rows_then_cols(image[0].transpose(1, 2), cols, rows).transpose(2, 3)
        return _rows_then_cols(image[0], rows, cols)

    def _warp(self, batch: Tensor, rand: _Sampler) -> Tensor:
        """Flip, affine and perspective as one homography per cutout, sampled once."""
        n, size = batch.shape[0], batch.shape[-1]
        # Each transform maps output coordinates to where they sample the input, in
        # grid_sample's normalised [-1, 1] space; a transform not drawn stays the identity.
        eye = torch.eye(3, dtype=batch.dtype, device=batch.device).expand(n, 3, 3)

        flip = eye.clone()
        flip[:, 0, 0] = torch.where(rand.uniform((n,), 0, 1) < self.flip_p, -1.0, 1.0)

        use_affine = rand.uniform((n,), 0, 1) < self.aug_p
        angle = rand.uniform((n,), -1, 1) * math.radians(self.degrees)
        zoom = rand.uniform((n,), *self.scale)
        shift = rand.uniform((n, 2), -1, 1) * (2 * self.translate)  # the [-1, 1] span is 2 wide
        affine = eye.clone()
        affine[:, 0, 0] = zoom * angle.cos()
        affine[:, 0, 1] = -zoom * angle.sin()
        affine[:, 1, 0] = zoom * angle.sin()
        affine[:, 1, 1] = zoom * angle.cos()
        affine[:, :2, 2] = shift
        affine = torch.where(use_affine[:, None, None], affine, eye)

        use_persp = rand.uniform((n,), 0, 1) < self.aug_p
        tilt = rand.uniform((n, 2), -self.perspective, self.perspective)
        persp = eye.clone()
        persp[:, 2, :2] = torch.where(use_persp[:, None], tilt, torch.zeros_like(tilt))

        homography = flip @ affine @ persp
        (points,) = self._cached(("grid", size), batch, lambda: _grid_points(size, batch.dtype, batch.device))
        src = points @ homography.transpose(1, 2)  # [n, size*size, 3]
        grid = (src[..., :2] / src[..., 2:]).reshape(n, size, size, 2)
        return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _jitter_colour(self, batch: Tensor, rand: _Sampler) -> Tensor:
        """Brightness, saturation and hue as one 3x3 matrix per cutout, then contrast."""
        n = batch.shape[0]
        dtype, device = batch.dtype, batch.device
        eye = torch.eye(3, dtype=dtype, device=device).expand(n, 3, 3)
        luma, cross, axis = self._cached(("colour",), batch, lambda: _colour_constants(dtype, device))
        use = rand.uniform((n,), 0, 1) < self.aug_p

        bright = rand.uniform((n, 1, 1), 1 - self.brightness, 1 + self.brightness)
        sat = rand.uniform((n, 1, 1), 1 - self.saturation, 1 + self.saturation)
        # Saturation blends each pixel with its grey value (luma · rgb).
        saturate = sat * eye + (1 - sat) * luma.expand(3, 3)
        # Hue turns colours about the grey diagonal (Rodrigues' rotation about (1,1,1)/√3).
        theta = rand.uniform((n, 1, 1), -self.hue, self.hue) * (2 * math.pi)
        rotate = theta.cos() * eye + theta.sin() * cross + (1 - theta.cos()) * axis
        matrix = torch.where(use[:, None, None], bright * rotate @ saturate, eye)

        out = torch.einsum("nij,njhw->nihw", matrix, batch)
        # Contrast blends with the mean grey of each cutout.
        contrast = rand.uniform((n, 1, 1, 1), 1 - self.contrast, 1 + self.contrast)
        contrast = torch.where(use[:, None, None, None], contrast, torch.ones_like(contrast))
        grey = torch.einsum("c,nchw->nhw", luma, out).mean(dim=(1, 2)).reshape(n, 1, 1, 1)
        # No clamp: it would zero the gradient of every pixel pushed past 0 or 1.
        return contrast * out + (1 - contrast) * grey


    def _cached(self, key: tuple[object, ...], like: Tensor, make) -> tuple[Tensor, ...]:  # type: ignore[no-untyped-def]
        full = (*key, like.dtype, like.device)
        found = self._constants.get(full)
        if found is None:
            made = make()
            found = self._constants[full] = made if isinstance(made, tuple) else (made,)
        return found


def _rows_then_cols(image: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """`rows[i] @ image[c] @ cols[i]^T` for every cutout i and channel c: [C, H, W] -> [n, C, k, k].

    Two plain matrix products, no broadcast copies of the image: every cutout's row matrix at
    once against the image's rows, then one batched product per cutout with its column matrix.
    """
    channels, height, width = image.shape
    n, k, _ = rows.shape
    by_row = rows.reshape(n * k, height) @ image.transpose(0, 1).reshape(height, channels * width)
    out = torch.bmm(by_row.view(n, k * channels, width), cols.transpose(1, 2))  # [n, k*C, k]
    return out.view(n, k, channels, k).transpose(1, 2)


def _resampling_matrix(side: Tensor, start: Tensor, length: int, out: int, dtype: torch.dtype) -> Tensor:
    """[n, out, length] weights that resize `side` pixels from `start` of an axis to `out` pixels.

    A crop of at least `out` pixels is area-averaged into the bins `adaptive_avg_pool2d` uses,
    [floor(i·side/out), ceil((i+1)·side/out)); a smaller one (only on canvases smaller than the
    cut size) is interpolated as `F.interpolate(mode="bilinear", align_corners=False)` does.
    """
    device = side.device
    i = torch.arange(out, device=device)
    j = torch.arange(length, device=device)
    side, start = side[:, None], start[:, None]  # [n, 1]
    low = start + (i * side) // out  # [n, out]
    high = start + ((i + 1) * side + out - 1) // out
    inside = (j >= low[..., None]) & (j < high[..., None])
    area = inside.to(dtype) / (high - low)[..., None].to(dtype)
    # Source coordinate of each output pixel centre, clamped at the first pixel as PyTorch does.
    src = ((i.to(dtype) + 0.5) * (side.to(dtype) / out) - 0.5).clamp(min=0)
    first = src.long()  # src >= 0, so truncation is the floor
    frac = (src - first)[..., None]
    second = torch.minimum(first + 1, side - 1)
    linear = (1 - frac) * (j == (start + first)[..., None]) + frac * (j == (start + second)[..., None])
    return torch.where((side < out)[..., None], linear.to(dtype), area)


def _grid_points(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Pixel centres of a size x size output in grid_sample's [-1, 1] space, homogeneous: [1, size², 3]."""
    centres = (torch.arange(size, dtype=dtype, device=device) + 0.5) / size * 2 - 1
    gy, gx = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(1, -1, 3)


def _colour_constants(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Luma weights, and the cross-product matrix and outer product of the grey axis (1,1,1)/√3."""
    luma = torch.tensor(_LUMA, dtype=dtype, device=device)
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], dtype=dtype, device=device)
    k = torch.full((3,), 1 / math.sqrt(3), dtype=dtype, device=device)
    return luma, cross / math.sqrt(3), torch.outer(k, k)


class _Sampler:
    """Draws from one generator (on its own device, so a CPU seed also drives a GPU run)."""

    def __init__(self, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> None:
        self.generator = generator
        self.device = device
        self.dtype = dtype
        self.draw_device = generator.device if generator is not None else device

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> Tensor:
        u = torch.rand(shape, generator=self.generator, device=self.draw_device, dtype=self.dtype)
        return (low + (high - low) * u).to(self.device)

    def normal(self, shape: tuple[int, ...]) -> Tensor:
        z = torch.randn(shape, generator=self.generator, device=self.draw_device, dtype=self.dtype)
        return z.to(self.device)
