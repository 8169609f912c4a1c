"""Stages 2 and 3: VQGAN+CLIP — optimise the VQGAN latent of an image toward weighted prompts.

Stage 2 ("scare") runs a few steps at lr 0.1 and returns the final image; stage 3
("nightmare") runs one step per video frame at lr 0.01 and yields each step's decoded image.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from engine.models.clip import ClipModel
from engine.models.vqgan import VQGAN
from engine.pipeline import compiled, graphs
from engine.pipeline.cutouts import MakeCutouts
from engine.pipeline.decode import decode
from engine.pipeline.host_memory import reuse_freed_memory
from engine.pipeline.losses import weighted_prompt_loss
from engine.pipeline.precision import Precision, networks, tf32_allowed
from engine.pipeline.progress import LossLog, Progress, ProgressCallback, no_progress
from engine.pipeline.prompts import WeightedPrompt
from engine.pipeline.tensors import HostCopy, clamp_with_grad, frame_copy, frozen, straight_through, to_still
from spooky.errors import EmptyPromptError, InputError, InvalidImageError, InvalidSizeError

SCARE = "scare"
NIGHTMARE = "nightmare"


@dataclass
class VqganClipParams:
    steps: int = 10  # stage 3: the number of frames
    lr: float = 0.1  # 0.1 for the scare pass, 0.01 for the nightmare video
    cutouts: int = 32  # CLIP crops per step
    cut_pow: float = 1.0  # > 1 favours small crops
    still_every: int = 5  # a progress still every this many steps (0: only the last)
    seed: int | None = None  # seeds the cutouts; None draws a fresh seed
    size: tuple[int, int] | None = None  # canvas (w, h); None keeps the image's size, snapped
    # Augment the cutouts (flip, warp, colour; noise is always added). Off only for toy models:
    # a random CLIP is not invariant to flips or warps, so augmented crops would not steer it.
    augment: bool = True
    # Recompute decoder activations block by block in the backward pass: same result, about a
    # third more time per step, and 608x752 fits an 8 GB GPU (decoder ~3 GiB instead of ~9 GiB).
    checkpoint: bool = True
    # Arithmetic of the decoder and CLIP (see engine.pipeline.precision); z and the loss stay fp32.
    precision: Precision = "fp32"
    # torch.compile the decoder and CLIP's image tower (engine.pipeline.compiled); the same images
    # within float rounding, a slow first step.
    compile: bool = False
    # Run each step as one static-shape update (engine.pipeline.graphs): captured once and replayed
    # as a CUDA graph on CUDA, eager elsewhere (the same frames within float rounding).
    cuda_graphs: bool = False


def prepare_image(image: Tensor | Image.Image, size: tuple[int, int], factor: int) -> Tensor:
    """Resize to `size` (w, h) -> [1, 3, h, w] in [-1, 1] (on the input's device; CPU for PIL).

    Tensors are [1, 3, H, W] or [3, H, W] in [-1, 1]. Like the original, the image is stretched
    to the canvas, not cropped. InvalidSizeError when a side is not a positive multiple of
    `factor` (the message names the nearest valid sizes).
    """
    check_size(size, factor)
    width, height = size
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
        if pil.size != (width, height):
            pil = pil.resize((width, height), Image.Resampling.LANCZOS)
        array = np.asarray(pil, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()
    if not isinstance(image, Tensor):
        raise InvalidImageError(f"expected a PIL image or a tensor, got {type(image).__name__}")
    x = image.detach()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[:2] != (1, 3):
        raise InvalidImageError(f"expected an image tensor [1, 3, H, W], got shape {tuple(image.shape)}")
    x = x.float()
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(-1, 1)


def check_size(size: tuple[int, int], factor: int) -> None:
    """InvalidSizeError unless both sides of (w, h) are positive multiples of `factor`."""
    width, height = size
    if width > 0 and height > 0 and width % factor == 0 and height % factor == 0:
        return
    near = ", ".join(f"{w}x{h}" for w, h in nearest_valid_sizes(size, factor))
    raise InvalidSizeError(
        f"canvas size {width}x{height} (w x h) is not allowed: both sides must be positive multiples "
        f"of {factor}, the VQGAN's downsampling factor",
        hint=f"the nearest valid sizes are {near}",
    )


def nearest_valid_sizes(size: tuple[int, int], factor: int) -> list[tuple[int, int]]:
    """Sizes with both sides positive multiples of `factor` around (w, h), nearest first."""

    def around(side: int) -> list[int]:
        below = max(factor, side // factor * factor)
        above = max(factor, -(-side // factor) * factor)
        return sorted({below, above})

    width, height = size
    options = [(w, h) for w in around(width) for h in around(height)]
    return sorted(options, key=lambda s: (abs(s[0] - width) + abs(s[1] - height), s))


def snap_size(size: tuple[int, int], factor: int) -> tuple[int, int]:
    """The valid size nearest to (w, h)."""
    return nearest_valid_sizes(size, factor)[0]


def scare(
    vqgan: VQGAN,
    clip: ClipModel,
    image: Tensor | Image.Image,
    prompts: Sequence[WeightedPrompt],
    params: VqganClipParams,
    callback: ProgressCallback = no_progress,
) -> Tensor:
    """Stage 2: the final decoded image [1, 3, h, w] in [-1, 1] after `params.steps` steps.

    Intermediate stills show the image each step was computed on; the last still and the
    result are decoded from the final latent. With 0 steps the pass is skipped and the
    resized input comes back unchanged.
    """
    _check(params)
    x = _canvas(vqgan, image, params)
    if params.steps == 0:
        return x
    with _Optimisation(vqgan, clip, x, prompts, params) as run:
        for step, decoded, _frame in run.steps():
            still = loss = None
            if step == params.steps:
                decoded = run.decode_latent()
            if _wants_still(step, params):
                still, loss = to_still(decoded), run.losses.latest()
            callback(Progress(SCARE, step, params.steps, loss, still))
    return decoded


def nightmare_frames(
    vqgan: VQGAN,
    clip: ClipModel,
    image: Tensor | Image.Image,
    prompts: Sequence[WeightedPrompt],
    params: VqganClipParams,
    callback: ProgressCallback = no_progress,
) -> Iterator[Tensor]:
    """Stage 3: lazily yield one frame per step, uint8 [h, w, 3] on the CPU.

    Frame k is the image that step k was computed on, so frame 1 is the input as the VQGAN
    sees it and each frame costs one decode. The progress callback runs before each frame is
    yielded; raising JobCancelled from it ends the stream. The VQGAN stays frozen until the
    stream ends: a caller that stops early should `close()` it (or use `contextlib.closing`).
    """
    # Checked and resized now, so a bad size fails at the call rather than at the first frame.
    _check(params)
    x = _canvas(vqgan, image, params)
    if not prompts:
        raise EmptyPromptError("no prompt was given", hint="give at least one prompt, e.g. 'nightmare'")
    return _frames(vqgan, clip, x, prompts, params, callback)


def _frames(
    vqgan: VQGAN,
    clip: ClipModel,
    x: Tensor,
    prompts: Sequence[WeightedPrompt],
    params: VqganClipParams,
    callback: ProgressCallback,
) -> Iterator[Tensor]:
    if params.steps == 0:
        return
    with _Optimisation(vqgan, clip, x, prompts, params) as run:
        for step, decoded, frame in run.steps(frames=True):
            still = loss = None
            if _wants_still(step, params):
                still, loss = to_still(decoded), run.losses.latest()
            callback(Progress(NIGHTMARE, step, params.steps, loss, still))
            assert frame is not None
            yield frame.result()


def _wants_still(step: int, params: VqganClipParams) -> bool:
    """Stills (and the loss read that comes with them: a host wait) on these steps only."""
    return step == params.steps or bool(params.still_every and step % params.still_every == 0)


# --- the shared optimisation loop ---------------------------------------------------------


class _Optimisation:
    """The Adam steps on z for one run; a context manager that keeps the VQGAN frozen meanwhile."""

    def __init__(
        self,
        vqgan: VQGAN,
        clip: ClipModel,
        x: Tensor,
        prompts: Sequence[WeightedPrompt],
        params: VqganClipParams,
    ) -> None:
        if not prompts:
            raise EmptyPromptError("no prompt was given", hint="give at least one prompt")
        self.vqgan, self.clip, self.x, self.params = vqgan, clip, x, params
        self.text_embeds = clip.encode_text([p.text for p in prompts])
        self.weights = torch.tensor([p.weight for p in prompts], device=self.text_embeds.device)
        # Static-shape crops on CUDA (fewer launches, nothing shape-dependent) and for a static
        # step; on the CPU the per-crop loop is faster (benchmarks/bench_cutouts.py).
        static = params.cuda_graphs or x.device.type == "cuda"
        self.cutouts = MakeCutouts(
            clip.image_size, params.cutouts, params.cut_pow, augment=params.augment, static_shapes=static
        )
        # On the canvas's device, so the cutouts' noise is drawn where it is used; the crop
        # positions come from a host RNG with the same seed (Python ints, no device read-back).
        self.generator = torch.Generator(device=x.device)
        if params.seed is None:
            seed = self.generator.seed()
        else:
            seed = params.seed
            self.generator.manual_seed(seed)
        self.crops = random.Random(seed)
        self._decode = compiled.decoder(vqgan, checkpointed=params.checkpoint, compile=params.compile)
        self._encode_image = compiled.image_tower(clip, compile=params.compile)
        self.losses = LossLog()
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Optimisation:
        self._stack.enter_context(frozen(self.vqgan))
        self._stack.enter_context(tf32_allowed(self.params.precision))
        # Each CPU step frees and reallocates gigabytes of activations: keep the pages.
        self._stack.enter_context(reuse_freed_memory(self.x.device.type == "cpu"))
        with torch.no_grad():
            # Start from the codes of the image, picked the way the model's quantiser picks them
            # (a Gumbel model scores codes with its `proj` logits): z is exactly those codebook
            # rows, so the first step decodes the input's codes.
            self.codes = self.vqgan.encode_to_codes(self.x)
            z = self.vqgan.quantize_codes(self.codes)
        self.z = z.detach().clone().requires_grad_(True)
        self.optimiser = torch.optim.Adam([self.z], lr=self.params.lr)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def steps(self, *, frames: bool = False) -> Iterator[tuple[int, Tensor, HostCopy | None]]:
        """After each step: (1-based step, decoded image of that step detached, its frame's copy).

        Nothing here reads a value back to the host: the loss goes to `self.losses` (read when
        a caller asks), and with `frames` the frame's copy to host memory is queued right after
        the decode, so on a GPU it lands while the backward pass still runs.
        """
        if self.params.cuda_graphs:
            yield from graphs.static_steps(self, frames=frames)
            return
        for i in range(self.params.steps):
            decoded, loss = self._forward()
            frame = frame_copy(decoded) if frames else None
            self.update(loss)
            self.losses.add(loss)
            del loss  # hold no graph across the yield
            yield i + 1, decoded, frame

    def update(self, loss: Tensor) -> None:
        """Adam on z from `loss`, then clamp z and re-pick its codes, all in place."""
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        with torch.no_grad():
            self.z.copy_(self.vqgan.clamp(self.z))
            # Quantised once per update, not again in the forward: the codes a step decodes are
            # those of the z it starts from (for step 1, the input's own codes). In place: a
            # captured CUDA graph (engine.pipeline.graphs) reads this very tensor.
            self.codes.copy_(self.vqgan.nearest_codes(self.z))

    @torch.no_grad()
    def decode_latent(self) -> Tensor:
        """The image of the current z, [1, 3, h, w] clamped to [-1, 1]."""
        with networks(self.params.precision, self.x.device):
            decoded = decode(self.vqgan, self.vqgan.quantize_codes(self.codes))
        return decoded.float().clamp(-1, 1)

    def _forward(self, boxes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(decoded image detached, loss) of the current codes; `boxes`: crops drawn already."""
        precision, device = self.params.precision, self.x.device
        z_q = straight_through(self.z, self.vqgan.quantize_codes(self.codes))
        with networks(precision, device):
            decoded = self._decode(z_q)
        # Cutouts and their augmentations in fp32: cheap, and their noise is not rounded away.
        decoded = decoded.float()
        # Keep the gradient of pixels the decoder pushes past [0, 1] so the loss can pull them back.
        x01 = clamp_with_grad(decoded.add(1).div(2), 0.0, 1.0)
        cuts = self.cutouts(x01, self.generator, self.crops, boxes=boxes)
        with networks(precision, device):
            embeds = self._encode_image(self.clip.normalize(cuts))
        loss = weighted_prompt_loss(embeds.float(), self.text_embeds, self.weights)
        return decoded.detach(), loss


def _canvas(vqgan: VQGAN, image: Tensor | Image.Image, params: VqganClipParams) -> Tensor:
    """The input resized to the canvas, on the VQGAN's device."""
    if params.size is not None:
        size = params.size
    elif isinstance(image, Image.Image):
        size = snap_size(image.size, vqgan.factor)
    else:
        size = snap_size((int(image.shape[-1]), int(image.shape[-2])), vqgan.factor)
    device = next(vqgan.parameters()).device
    return prepare_image(image, size, vqgan.factor).to(device)


def _check(params: VqganClipParams) -> None:
    if params.steps < 0:
        raise InputError(f"steps must be 0 or more, got {params.steps}")
    if not params.lr > 0:
        raise InputError(f"the learning rate must be positive, got {params.lr}")
    if params.cutouts < 1:
        raise InputError(f"cutouts must be at least 1, got {params.cutouts}")
    if not params.cut_pow > 0:
        raise InputError(f"cut_pow must be positive, got {params.cut_pow}")
    if params.still_every < 0:
        raise InputError(f"still_every must be 0 (last still only) or more, got {params.still_every}")
