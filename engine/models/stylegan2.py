"""StyleGAN2 generator in pure PyTorch that loads rosinality-format checkpoints.

The module tree mirrors rosinality/stylegan2-pytorch's `model.Generator`, so `state_dict()` has
exactly the keys, shapes and order of a rosinality `g_ema` (FIR `kernel` buffers and
`noises.noise_i` included) and `torch.save({"g_ema": g.state_dict(), "latent_avg": g.latent_avg})`
writes a real-format checkpoint. The maths follows rosinality's CPU path (equalised learning
rate at run time, per-sample modulated convs as one grouped conv, transposed conv + FIR blur for
up-sampling, FIR up-sampled RGB skips); compatibility is checked against
`shared/golden/stylegan2/` by `tests/engine/test_stylegan2.py`.

On CUDA, TF32 changes results visibly; turn it off where bit-closeness to float32 matters.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.checkpoints import load_torch_file
from engine.models.state_dicts import check_state_dict, describe_contents, tensor_problem
from engine.models.stylegan2_ops import blur, fir_kernel_2d, upsample2x
from spooky.errors import CheckpointMismatchError, CorruptWeightsError

log = logging.getLogger(__name__)

NoiseMode = Literal["const", "random"]

FETCH_HINT = "run `spooky weights fetch stylegan2_ffhq` or set [models] stylegan2 in config.toml"
SQRT2 = math.sqrt(2.0)
LRELU_SLOPE = 0.2
#: rosinality's channel table before the `channel_max` cap; entries from 64 px on are × channel_multiplier.
_BASE_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
_MIN_SIZE, _MAX_SIZE = 4, 1024


def channel_table(size: int, channel_multiplier: int = 2, channel_max: int = 512) -> dict[int, int]:
    """Feature channels per resolution 4 .. size (rosinality's table, capped at `channel_max`)."""
    table = {}
    r = 4
    while r <= size:
        base = _BASE_CHANNELS[r] * (channel_multiplier if r >= 64 else 1)
        table[r] = min(base, channel_max)
        r *= 2
    return table


def _fused_lrelu(x: Tensor, bias: Tensor) -> Tensor:
    """rosinality `fused_leaky_relu` (CPU branch): leaky_relu(x + b, 0.2) * sqrt(2), b per channel."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.to(x.dtype).view(shape), LRELU_SLOPE) * SQRT2


# --- layers (names and registration order are the checkpoint's key layout) -----------------


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with the equalised-lr scale `lr_mul / sqrt(in)` applied at run time."""

    def __init__(
        self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        if self.activate:
            # Bias is added inside the activation, after the matmul, as rosinality does.
            return _fused_lrelu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class FirFilter(nn.Module):
    """Holds the constant 4x4 FIR as buffer `kernel` (rosinality `Blur` / `Upsample`)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernel", fir_kernel_2d())


class ModulatedConv2d(nn.Module):
    """Style-modulated conv; batch folded into groups so each sample has its own weights."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        if upsample:
            self.blur = FirFilter()  # registered before `modulation`: checkpoint key order
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def _sample_factors(self, style: Tensor, gain: float) -> Tensor:
        """Per-sample factor [N, C_out, C_in] so that weight_n = weight * factor_n.

        Same maths as rosinality (scale, modulate, demodulate with eps 1e-8 inside the rsqrt), but
        the demodulation sum is taken as s^2 @ (sum_k W^2)^T instead of over a materialised
        [N, C_out, C_in, k, k] tensor: one pass over the big weight instead of five.
        """
        s = self.modulation(style)  # [N, C_in]
        w = self.weight[0]
        out_scale = torch.full_like(s[:, :1], self.scale * gain).expand(-1, self.out_channels)
        if self.demodulate:
            energy = (s * s) @ w.pow(2).sum(dim=(2, 3)).t()  # [N, C_out]
            out_scale = out_scale * torch.rsqrt(energy * self.scale**2 + 1e-8)
        return out_scale.unsqueeze(2) * s.unsqueeze(1)

    def forward(self, x: Tensor, style: Tensor, bias: Tensor | None = None, gain: float = 1.0) -> Tensor:
        """gain * (modulated_conv(x) + bias); `bias` [C_out] rides along in the conv (or blur) op."""
        n, c, h, w = x.shape
        k, c_out = self.kernel_size, self.out_channels
        factors = self._sample_factors(style, gain).to(x.dtype)  # [N, C_out, C_in]
        weight = self.weight[0].to(x.dtype)
        if bias is not None:
            bias = (bias * gain).to(x.dtype)
        if k == 1 and not self.upsample:
            # 1x1 (ToRGB): a batched matmul, faster on CPU than a grouped 1x1 conv.
            wn = weight[:, :, 0, 0] * factors  # [N, C_out, C_in]
            out = torch.matmul(wn, x.reshape(n, c, h * w))
            if bias is not None:
                out = out + bias.view(1, c_out, 1)
            return out.view(n, c_out, h, w)
        x = x.reshape(1, n * c, h, w)
        if self.upsample:
            # Transposed conv takes [C_in, C_out, k, k] per group with no spatial flip; its 2H+1
            # output is brought to 2H by the (1, 1)-padded 4x4 blur, which also adds the bias.
            wt = weight.transpose(0, 1).contiguous() * factors.transpose(1, 2)[..., None, None]
            out = F.conv_transpose2d(x, wt.reshape(n * c, c_out, k, k), stride=2, groups=n)
            out = out.view(n, c_out, out.shape[-2], out.shape[-1])
            return blur(out, self.blur.kernel, pad=(1, 1), bias=bias)
        wn = weight.unsqueeze(0) * factors[..., None, None]
        out = F.conv2d(
            x,
            wn.reshape(n * c_out, c, k, k),
            bias=None if bias is None else bias.repeat(n),
            padding=k // 2,
            groups=n,
        )
        return out.view(n, c_out, h, w)


class NoiseInjection(nn.Module):
    """Holds the per-layer noise strength `weight` [1] (applied in StyledConv.forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


class FusedLeakyReLU(nn.Module):
    """Holds the per-channel bias added before the leaky ReLU (applied in StyledConv.forward)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))


class StyledConv(nn.Module):
    """Modulated 3x3 conv (optionally up-sampling), then noise, then bias + leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor) -> Tensor:
        # rosinality: leaky_relu(conv + w_noise * noise + bias, 0.2) * sqrt(2). The leaky ReLU is
        # positively homogeneous, so sqrt(2) is folded into the conv weights and bias and the bias
        # into the conv op: two passes over the activation (noise add, ReLU) instead of four.
        out = self.conv(x, style, bias=self.activate.bias, gain=SQRT2)
        out = out.add_((noise * (self.noise.weight * SQRT2)).to(out.dtype))
        return F.leaky_relu_(out, LRELU_SLOPE)


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation, plus bias, plus the FIR-up-sampled previous RGB."""

    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = FirFilter()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style, bias=self.bias.view(3))
        if skip is not None:
            out = out + upsample2x(skip, self.upsample.kernel)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


# --- the generator ---------------------------------------------------------------------------


class StyleGAN2Generator(nn.Module):
    """rosinality-compatible StyleGAN2 generator: `mapping` (z -> w) and `synthesis` (W+ -> image).

    A freshly built generator has random weights and `latent_avg` = 0; `from_state_dict` /
    `load_stylegan2` set it from the checkpoint or from `mean_latent()`.
    """

    def __init__(
        self,
        size: int,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        channel_max: int = 512,
        lr_mlp: float = 0.01,
    ) -> None:
        super().__init__()
        if size not in _BASE_CHANNELS:
            raise ValueError(
                f"StyleGAN2 size {size} is not supported: use a power of two from {_MIN_SIZE} to {_MAX_SIZE}"
            )
        if style_dim < 1 or n_mlp < 1 or channel_multiplier < 1 or channel_max < 1:
            raise ValueError(
                f"style_dim, n_mlp, channel_multiplier and channel_max must be >= 1, got {style_dim}, "
                f"{n_mlp}, {channel_multiplier}, {channel_max}"
            )
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.channel_multiplier, self.channel_max, self.lr_mlp = channel_multiplier, channel_max, lr_mlp
        self.channels = channel_table(size, channel_multiplier, channel_max)
        self.log_size = int(math.log2(size))
        self.num_ws = 2 * self.log_size - 2
        self.num_noises = 2 * self.log_size - 3

        layers: list[nn.Module] = [PixelNorm()]
        layers += [EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activate=True) for _ in range(n_mlp)]
        self.style = nn.Sequential(*layers)

        c4 = self.channels[4]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, style_dim)
        self.to_rgb1 = ToRGB(c4, style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_noises):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        in_ch = c4
        for log_res in range(3, self.log_size + 1):
            out_ch = self.channels[2**log_res]
            self.convs.append(StyledConv(in_ch, out_ch, style_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, style_dim))
            self.to_rgbs.append(ToRGB(out_ch, style_dim))
            in_ch = out_ch
        # Not part of g_ema: the checkpoint stores it beside the state dict.
        self.register_buffer("latent_avg", torch.zeros(style_dim), persistent=False)

    # -- public API --

    def mapping(self, z: Tensor) -> Tensor:
        """z [N, style_dim] -> w [N, style_dim] (PixelNorm, then n_mlp EqualLinear + leaky ReLU)."""
        if z.ndim != 2 or z.shape[1] != self.style_dim:
            raise ValueError(f"mapping expects z of shape [N, {self.style_dim}], got {list(z.shape)}")
        return self.style(z)

    def truncate(self, w: Tensor, truncation: float) -> Tensor:
        """Pull w (any shape ending in style_dim) toward `latent_avg`: avg + psi * (w - avg)."""
        if truncation == 1.0:
            return w
        avg = self.latent_avg.to(w.dtype)
        return avg + truncation * (w - avg)

    def synthesis(self, ws: Tensor, noise: NoiseMode = "const") -> Tensor:
        """W+ [N, num_ws, style_dim] -> raw image [N, 3, size, size] (about [-1, 1], not clamped).

        noise="const" uses the stored `noises.noise_i` (rosinality randomize_noise=False);
        "random" draws fresh N(0, 1) noise per sample and layer.
        """
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.style_dim):
            raise ValueError(
                f"synthesis expects W+ of shape [N, {self.num_ws}, {self.style_dim}], got {list(ws.shape)}"
            )
        n = ws.shape[0]
        noises = self._noises(noise, n, ws.device)
        x = self.conv1(self.input(n), ws[:, 0], noises[0])
        skip = self.to_rgb1(x, ws[:, 1])
        for j, to_rgb in enumerate(self.to_rgbs):
            # Row 2j+3 styles this block's ToRGB and the next block's up-sampling conv.
            x = self.convs[2 * j](x, ws[:, 2 * j + 1], noises[2 * j + 1])
            x = self.convs[2 * j + 1](x, ws[:, 2 * j + 2], noises[2 * j + 2])
            skip = to_rgb(x, ws[:, 2 * j + 3], skip)
        return skip

    def forward(self, z: Tensor, truncation: float = 1.0, noise: NoiseMode = "const") -> Tensor:
        """mapping -> truncation toward latent_avg -> broadcast to W+ -> synthesis."""
        w = self.truncate(self.mapping(z), truncation)
        return self.synthesis(w.unsqueeze(1).expand(-1, self.num_ws, -1), noise=noise)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: int = 0) -> Tensor:
        """Mean of mapping(z) over `n` z ~ N(0, 1) drawn from `seed` (CPU RNG: same on every device)."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        z = torch.randn(n, self.style_dim, generator=g)
        device = self.latent_avg.device
        return self.mapping(z.to(device=device, dtype=self.style[1].weight.dtype)).mean(dim=0)

    @torch.no_grad()
    def set_latent_avg(self, latent_avg: Tensor | None = None) -> None:
        """Set the truncation centre; None computes `mean_latent()` from the current weights."""
        value = self.mean_latent() if latent_avg is None else latent_avg
        self.latent_avg.copy_(value.reshape(self.style_dim))

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, Tensor], latent_avg: Tensor | None = None
    ) -> StyleGAN2Generator:
        """Build from a rosinality `g_ema` state dict; architecture numbers are read from it.

        Missing `noises.*` are filled with deterministic N(0, 1) noise (with a warning); the FIR
        `kernel` buffers are constants and are not read. Without `latent_avg` the mean latent
        of 4096 mapped samples is used.
        """
        arch = infer_architecture(state_dict)
        # Construction draws random init values; keep the caller's RNG stream untouched.
        with torch.random.fork_rng(devices=[]):
            try:
                gen = cls(**arch.__dict__)
            except ValueError as e:
                raise CheckpointMismatchError(f"g_ema describes no StyleGAN2 generator: {e}") from e
        gen._load_g_ema(state_dict)
        if latent_avg is None:
            gen.set_latent_avg()
        else:
            is_tensor = isinstance(latent_avg, Tensor)
            if not is_tensor or latent_avg.numel() != gen.style_dim or not latent_avg.is_floating_point():
                found = (
                    f"{list(latent_avg.shape)} {latent_avg.dtype}" if is_tensor else type(latent_avg).__name__
                )
                raise CheckpointMismatchError(
                    f"latent_avg must be a floating-point tensor of {gen.style_dim} values (the generator's "
                    f"style_dim), found {found}",
                    hint="pass latent_avg=None to use the mean of mapped random latents instead",
                )
            gen.set_latent_avg(latent_avg.detach().float())
        return gen

    # -- internals --

    def _noises(self, mode: NoiseMode, batch: int, device: torch.device) -> list[Tensor]:
        stored = [getattr(self.noises, f"noise_{i}") for i in range(self.num_noises)]
        if mode == "const":
            return stored
        if mode == "random":
            return [torch.randn(batch, 1, *t.shape[-2:], device=device, dtype=t.dtype) for t in stored]
        raise ValueError(f"noise must be 'const' or 'random', got {mode!r}")

    def _check_g_ema(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Raise CheckpointMismatchError unless `state_dict` fits; return the `noises.*` it lacks."""
        own = self.state_dict()
        unexpected = [k for k in state_dict if k not in own]
        if unexpected:
            raise CheckpointMismatchError(
                f"g_ema has {len(unexpected)} key(s) a StyleGAN2 generator of size {self.size} does not "
                f"have, e.g. {unexpected[:5]}",
                hint="the file is not a consistent rosinality StyleGAN2 g_ema",
            )
        missing_noise = []
        for key, mine in own.items():
            if key.endswith(".kernel"):
                continue  # constant FIR: ours is the reference value
            if key not in state_dict:
                if key.startswith("noises."):
                    missing_noise.append(key)
                    continue
                raise CheckpointMismatchError(
                    f"g_ema lacks key {key!r} (shape {list(mine.shape)}) that a StyleGAN2 generator of "
                    f"size {self.size} needs",
                    hint="the file is not a complete rosinality StyleGAN2 g_ema",
                )
            theirs = state_dict[key]
            if not isinstance(theirs, Tensor) or theirs.shape != mine.shape:
                found = list(theirs.shape) if isinstance(theirs, Tensor) else type(theirs).__name__
                raise CheckpointMismatchError(
                    f"g_ema key {key!r} has shape {found}, expected {list(mine.shape)} for the architecture "
                    f"read from the other keys (size {self.size}, style_dim {self.style_dim}, channels "
                    f"{self.channels})",
                    hint="the file is not a consistent rosinality StyleGAN2 g_ema",
                )
            if not theirs.is_floating_point():
                raise CheckpointMismatchError(
                    f"g_ema key {key!r} is a {theirs.dtype} tensor; a generator's weights are floating point",
                    hint="the file is not a consistent rosinality StyleGAN2 g_ema",
                )
        return missing_noise

    def _load_g_ema(self, state_dict: Mapping[str, Tensor]) -> None:
        missing_noise = self._check_g_ema(state_dict)
        full: dict[str, Tensor] = {}
        for key, mine in self.state_dict().items():
            if key.endswith(".kernel"):
                full[key] = mine
            elif key in missing_noise:
                g = torch.Generator(device="cpu").manual_seed(zlib.crc32(key.encode("utf-8")))
                full[key] = torch.randn(mine.shape, generator=g)
            else:
                full[key] = state_dict[key]
        if missing_noise:
            what = ", ".join(missing_noise) if len(missing_noise) < 4 else f"{len(missing_noise)} noises.*"
            log.warning(
                "StyleGAN2 g_ema has no %s buffers (older conversion); using fixed N(0,1) noise seeded "
                "by key name",
                what,
            )
        self.load_state_dict(full, strict=True)


@dataclass(frozen=True)
class Architecture:
    """The constructor arguments read from a g_ema state dict."""

    size: int
    style_dim: int
    n_mlp: int
    channel_multiplier: int
    channel_max: int


def _shape_of(state_dict: Mapping[str, Tensor], key: str, ndim: int) -> tuple[int, ...]:
    t = state_dict.get(key)
    if not isinstance(t, Tensor):
        sample = list(state_dict)[:6]
        raise CheckpointMismatchError(
            f"not a StyleGAN2 g_ema: key {key!r} is missing "
            f"(the dict has {len(state_dict)} keys, e.g. {sample})",
            hint="pass the rosinality generator state dict (checkpoint['g_ema'])",
        )
    if t.ndim != ndim:
        raise CheckpointMismatchError(
            f"g_ema key {key!r} has shape {list(t.shape)}, expected a {ndim}-D tensor",
            hint="the file is not a consistent rosinality StyleGAN2 g_ema",
        )
    return tuple(t.shape)


def infer_architecture(state_dict: Mapping[str, Tensor]) -> Architecture:
    """Read size, style_dim, n_mlp, channel_multiplier and channel_max from key names and shapes."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointMismatchError(
            f"a StyleGAN2 g_ema must be a mapping of tensors, got {type(state_dict).__name__}"
        )
    out_dim, style_dim = _shape_of(state_dict, "style.1.weight", 2)
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in state_dict:
        n_mlp += 1
        # Each mapping layer is checked here, before the generator is built: the count of these
        # keys is the one size a file can state without holding the weights for it.
        key = f"style.{n_mlp}.weight"
        if _shape_of(state_dict, key, 2) != (style_dim, style_dim):
            raise CheckpointMismatchError(
                f"g_ema key {key!r} has shape {list(state_dict[key].shape)}, expected "
                f"{[style_dim, style_dim]} like style.1.weight",
                hint="the file is not a consistent rosinality StyleGAN2 g_ema",
            )
    n_rgbs = 0
    while f"to_rgbs.{n_rgbs}.conv.weight" in state_dict:
        n_rgbs += 1
    size = 2 ** (n_rgbs + 2)
    if size not in _BASE_CHANNELS:
        raise CheckpointMismatchError(
            f"g_ema has {n_rgbs} to_rgbs.* layers, i.e. size {size}; supported sizes are "
            f"{_MIN_SIZE}..{_MAX_SIZE}",
        )

    # Channels per resolution, read from the conv that produces it.
    sources = {4: "conv1.conv.weight"} | {2 ** (j + 3): f"convs.{2 * j}.conv.weight" for j in range(n_rgbs)}
    found = {r: _shape_of(state_dict, key, 5)[1] for r, key in sources.items()}
    channel_max = max(found.values())
    channel_multiplier = _infer_multiplier(found, channel_max)
    expected = channel_table(size, channel_multiplier, channel_max)
    for r, key in sources.items():
        if found[r] != expected[r]:
            raise CheckpointMismatchError(
                f"g_ema key {key!r} gives {found[r]} channels at {r}px, but rosinality's channel table "
                f"(channel_multiplier {channel_multiplier}, channel_max {channel_max}) has {expected[r]}; "
                f"channels found: {found}",
                hint="the file is not a consistent rosinality StyleGAN2 g_ema",
            )
    if out_dim != style_dim:
        raise CheckpointMismatchError(
            f"g_ema key 'style.1.weight' has shape {[out_dim, style_dim]}, expected a square mapping layer",
        )
    return Architecture(size, style_dim, n_mlp, channel_multiplier, channel_max)


def _infer_multiplier(found: Mapping[int, int], channel_max: int) -> int:
    """channel_multiplier from the first resolution >= 64 whose channels sit below the cap."""
    for r in sorted(found):
        if r >= 64 and found[r] < channel_max:
            return max(1, found[r] // _BASE_CHANNELS[r])
    # Every layer is at the cap: any multiplier that reaches it fits; prefer rosinality's default 2.
    top = max(found)
    if top < 64 or _BASE_CHANNELS[top] * 2 >= channel_max:
        return 2
    return -(-channel_max // _BASE_CHANNELS[top])


def load_stylegan2(path: str | Path, device: str | torch.device = "cpu") -> StyleGAN2Generator:
    """Load a rosinality checkpoint (converted `{'g_ema', 'latent_avg'}` or train.py output).

    Returns the generator in eval mode, frozen (requires_grad False), on `device`.
    """
    ckpt = load_torch_file(path, what="StyleGAN2 checkpoint", fetch_hint=FETCH_HINT)
    if not isinstance(ckpt, Mapping) or "g_ema" not in ckpt:
        raise CheckpointMismatchError(
            f"StyleGAN2 checkpoint {path} has no 'g_ema' generator; {describe_contents(ckpt)}",
            hint="expected a rosinality file with 'g_ema' (and 'latent_avg'); " + FETCH_HINT,
        )
    g_ema = check_state_dict(ckpt["g_ema"], what="StyleGAN2 checkpoint's g_ema", path=path, hint=FETCH_HINT)
    latent_avg = ckpt.get("latent_avg")
    problem = tensor_problem(latent_avg) if isinstance(latent_avg, Tensor) else None
    if problem:
        raise CorruptWeightsError(
            f"StyleGAN2 checkpoint {path} holds {problem} as 'latent_avg'", hint=FETCH_HINT
        )
    try:
        gen = StyleGAN2Generator.from_state_dict(g_ema, latent_avg)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"StyleGAN2 checkpoint {path}: {e.message}", hint=e.hint) from e
    gen.eval().requires_grad_(False)
    return gen.to(device)
