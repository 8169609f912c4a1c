"""Stage 1: StyleGAN2 steered by CLIP (StyleCLIP free generation) — optimise W+ toward a prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from engine.models.clip import ClipModel
from engine.models.stylegan2 import StyleGAN2Generator
from engine.pipeline.host_memory import reuse_freed_memory
from engine.pipeline.losses import clip_similarity, styleclip_loss
from engine.pipeline.precision import Precision, networks, tf32_allowed
from engine.pipeline.progress import LossLog, ProgressCallback, StepReport, no_progress
from engine.pipeline.schedule import styleclip_lr
from engine.pipeline.tensors import clamp_with_grad, frozen, resize_square, to_still
from spooky.errors import InputError

STAGE = "stylegan"


@dataclass
class StyleClipParams:
    steps: int = 40
    lr: float = 0.1  # peak of StyleCLIP's warm-up / cosine ramp-down schedule
    l2_lambda: float = 0.008  # pull toward the start latent
    still_every: int = 5  # a progress still every this many steps (0: only the final image)
    seed: int | None = None  # None starts from the mean face; a seed starts from a random one
    truncation: float = 0.7  # how far a seeded start may stray from the mean (0 = mean face)
    # Arithmetic of the synthesis and CLIP (see engine.pipeline.precision); W+ and the loss stay fp32.
    precision: Precision = "fp32"


@dataclass
class StyleClipResult:
    image: Tensor  # [1, 3, S, S] in [-1, 1] (clamped), rendered from `latent`
    latent: Tensor  # [1, num_ws, D] final W+
    start_latent: Tensor  # [1, num_ws, D] where the optimisation began
    losses: list[float] = field(default_factory=list)  # one per step, before that step's update


@torch.no_grad()
def start_latent(gen: StyleGAN2Generator, seed: int | None, truncation: float) -> Tensor:
    """The W+ start: the mean latent, or with a seed a truncated random w (same on every device)."""
    avg = gen.latent_avg
    w = avg[None]
    if seed is not None:
        # z from a CPU generator, so a seed gives the same face on CPU and GPU.
        z = torch.randn(1, gen.style_dim, generator=torch.Generator().manual_seed(seed))
        mapped = gen.mapping(z.to(device=avg.device, dtype=avg.dtype))
        w = avg + truncation * (mapped - avg)
    return w[:, None, :].expand(1, gen.num_ws, gen.style_dim).clone()


def optimise_latent(
    gen: StyleGAN2Generator,
    clip: ClipModel,
    prompt: str,
    params: StyleClipParams,
    callback: ProgressCallback = no_progress,
) -> StyleClipResult:
    """Optimise W+ with Adam so that the face matches `prompt`; report every step to `callback`.

    Stills on intermediate steps show the image that step was computed on (no extra synthesis);
    the last step's still is the final image, rendered from the final latent.
    """
    _check(params)
    text = clip.check_prompt(prompt)
    device = gen.latent_avg.device
    with frozen(gen), tf32_allowed(params.precision), reuse_freed_memory(device.type == "cpu"):
        text_embed = clip.encode_text([text])
        start = start_latent(gen, params.seed, params.truncation)
        latent = start.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([latent], lr=params.lr)
        losses = LossLog()
        final: Tensor | None = None
        for i in range(params.steps):
            for group in optimiser.param_groups:
                group["lr"] = styleclip_lr(i, params.steps, params.lr)
            image, loss = _forward(gen, clip, latent, start, text_embed, params, device)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.add(loss)  # kept on the device: no host wait inside the step
            del loss  # its graph is already freed by backward; drop the handle too

            step = i + 1
            still = value = None
            if step == params.steps:
                with torch.no_grad(), networks(params.precision, device):
                    final = gen.synthesis(latent, noise="const")
                final = final.float().clamp(-1, 1)
                still, value = to_still(final), losses.latest()
            elif params.still_every and step % params.still_every == 0:
                still, value = to_still(image), losses.latest()
            del image
            callback(StepReport(STAGE, step, params.steps, value, still))
    assert final is not None  # steps >= 1 is checked above
    return StyleClipResult(final, latent.detach(), start, losses.values())


def clip_input(image: Tensor, clip: ClipModel) -> Tensor:
    """Generator output (about [-1, 1]) -> CLIP's normalised input at its resolution.

    The original fed CLIP the raw output; we clamp to [-1, 1] (keeping the gradient of pixels
    that overshoot, so they can be pulled back), map to [0, 1], resize with an antialiased
    bicubic filter (a 1024 face shrinks to 224 without aliasing) and normalise.
    """
    x01 = clamp_with_grad(image, -1.0, 1.0).add(1).div(2)
    return clip.normalize(resize_square(x01, clip.image_size))


@torch.no_grad()
def clip_score(clip: ClipModel, image: Tensor, texts: list[str]) -> Tensor:
    """Cosine similarity [len(texts)] of a whole image (about [-1, 1]) to each text, no augmentation.

    For metrics and tests: the image is squeezed to CLIP's square input as it is, not cut up.
    """
    embed = clip.encode_image(clip_input(image.clamp(-1, 1), clip))
    return clip_similarity(embed, clip.encode_text(texts))[0]


def _forward(
    gen: StyleGAN2Generator,
    clip: ClipModel,
    latent: Tensor,
    start: Tensor,
    text_embed: Tensor,
    params: StyleClipParams,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """The image for `latent` (detached) and the loss (its graph holds only this step)."""
    with networks(params.precision, device):
        image = gen.synthesis(latent, noise="const").float()
        embed = clip.encode_image(clip_input(image, clip))
    loss, _, _ = styleclip_loss(embed.float(), text_embed, latent, start, params.l2_lambda)
    return image.detach(), loss


def _check(params: StyleClipParams) -> None:
    if params.steps < 1:
        raise InputError(f"StyleGAN steps must be at least 1, got {params.steps}")
    if not params.lr > 0:
        raise InputError(f"the StyleGAN learning rate must be positive, got {params.lr}")
    if params.still_every < 0:
        raise InputError(f"still_every must be 0 (final image only) or more, got {params.still_every}")
    if not 0 <= params.truncation <= 1:
        raise InputError(f"truncation must be in [0, 1], got {params.truncation}")
