"""Stages 2 and 3: VQGAN+CLIP — optimise the VQGAN latent of an image toward weighted prompts.

Stage 2 ("scare") runs a few steps at lr 0.1 and returns the final image; stage 3
("nightmare") runs one step per video frame at lr 0.01 and yields each step's decoded image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from engine.models.clip import ClipModel
from engine.models.vqgan import VQGAN
from engine.pipeline import graphs
from engine.pipeline.canvas import check_canvas, snap_size
from engine.pipeline.optimisation import StepOutput, VqganClipOptimisation, VqganClipParams
from engine.pipeline.progress import ProgressCallback, StepReport, no_progress
from engine.pipeline.prompts import WeightedPrompt
from engine.pipeline.tensors import to_still
from spooky.errors import EmptyPromptError, InputError, InvalidImageError

SCARE = "scare"
NIGHTMARE = "nightmare"


def prepare_image(image: Tensor | Image.Image, size: tuple[int, int], factor: int) -> Tensor:
    """Resize to `size` (w, h) -> [1, 3, h, w] in [-1, 1] (on the input's device; CPU for PIL).

    Tensors are [1, 3, H, W] or [3, H, W] in [-1, 1]. Like the original, the image is stretched
    to the canvas, not cropped. InvalidSizeError when a side is not a positive multiple of
    `factor` (the message names the nearest valid sizes).
    """
    check_canvas(size, factor)
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
    with VqganClipOptimisation(vqgan, clip, x, prompts, params) as run:
        for step, decoded, _frame in run_steps(run):
            still = loss = None
            if step == params.steps:
                decoded = run.decode_latent()
            if _wants_still(step, params):
                still, loss = to_still(decoded), run.losses.latest()
            callback(StepReport(SCARE, step, params.steps, loss, still))
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
    with VqganClipOptimisation(vqgan, clip, x, prompts, params) as run:
        for step, decoded, frame in run_steps(run, frames=True):
            still = loss = None
            if _wants_still(step, params):
                still, loss = to_still(decoded), run.losses.latest()
            callback(StepReport(NIGHTMARE, step, params.steps, loss, still))
            assert frame is not None
            yield frame.result()


def _wants_still(step: int, params: VqganClipParams) -> bool:
    """Stills (and the loss read that comes with them: a host wait) on these steps only."""
    return step == params.steps or bool(params.still_every and step % params.still_every == 0)


def run_steps(run: VqganClipOptimisation, *, frames: bool = False) -> Iterator[StepOutput]:
    """The run's steps the way its params ask: the static (CUDA-graph) step or the eager loop."""
    if run.params.cuda_graphs:
        return graphs.static_steps(run, frames=frames)
    return run.steps(frames=frames)


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
