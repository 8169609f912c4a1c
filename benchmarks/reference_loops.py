"""The loops the product re-implements, re-created from their published algorithms (not copied code).

StyleCLIP's `run_optimization.py` free generation (generator and CLIP left trainable as written,
text re-encoded every step, x7 upsample + 32x avg-pool to 224) and Crowson's VQGAN+CLIP notebook
loop (straight-through one-hot codebook product, per-cutout crops, warp and colour jitter as two
grid_samples and an elementwise jitter, spherical distance, clamp after each step), on the same
networks and sizes as the pipeline: `bench_stages.py --reference` runs them beside it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pipeline_helpers import PROMPT, StepClock, face_image, measure


def bench_ref_styleclip(models: Any, steps: int, frozen: bool) -> dict[str, float]:
    """StyleCLIP run_optimization.py (free generation): W+ from the mean latent, Adam at lr 0.1 with
    its schedule, CLIPLoss = 1 - CLIP(avgpool32(upsample7(img)), text)/100, + 0.008 * L2. As
    written, the generator and CLIP stay trainable (weight gradients are computed, never used)."""
    from engine.pipeline.schedule import styleclip_lr

    gen, clip = models.stylegan, models.clip
    tokens = clip.tokenizer([PROMPT]).to(models.device)
    init = gen.latent_avg[None, None, :].expand(1, gen.num_ws, gen.style_dim).clone()
    # As written: x7 then a 32-pixel average pool, 1024 -> 224 (the kernel follows CLIP's size for toys).
    upsample, pool = (
        torch.nn.Upsample(scale_factor=7),
        torch.nn.AvgPool2d(kernel_size=gen.size * 7 // clip.image_size),
    )
    modules = (gen, clip.model)
    flags = [p.requires_grad for m in modules for p in m.parameters()]
    for m in modules:
        m.requires_grad_(not frozen)

    def run(clock: StepClock) -> None:
        latent = init.clone().requires_grad_(True)
        opt = torch.optim.Adam([latent], lr=0.1)
        for i in range(steps):
            opt.param_groups[0]["lr"] = styleclip_lr(i, steps, 0.1)
            img = gen.synthesis(latent, noise="const")
            image = pool(upsample(img))
            img_f = F.normalize(clip.model.encode_image(image), dim=-1)
            txt_f = F.normalize(clip.model.encode_text(tokens), dim=-1)
            c_loss = 1 - (clip.model.logit_scale.exp() * img_f @ txt_f.T)[0] / 100
            loss = c_loss + 0.008 * ((init - latent) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            _ = loss.item()  # the progress bar's description
            for m in modules:
                m.zero_grad(set_to_none=True)
            clock(None)

    try:
        return measure(models.device, run)
    finally:
        params = [p for m in modules for p in m.parameters()]
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def bench_ref_vqgan_clip(models: Any, steps: int, cutouts: int, size: tuple[int, int]) -> dict[str, float]:
    """Crowson's VQGAN+CLIP notebook loop: z from encode + quantise; each step the straight-through
    one-hot codebook product, decode, ClampWithGrad to [0, 1], cutouts (per-cutout crop + area
    pooling, flip/affine/perspective warps, colour jitter, noise), CLIP, spherical distance, Adam at
    lr 0.1, clamp z to the codebook range. No decoder checkpointing; frozen models."""
    from engine.pipeline.losses import spherical_distance
    from engine.pipeline.tensors import clamp_with_grad

    vq, clip = models.vqgan, models.clip
    device = models.device
    w, h = size
    x = F.interpolate(face_image(models), size=(h, w), mode="bicubic", antialias=True).clamp(-1, 1)
    codebook = vq.codebook.detach()
    text = clip.encode_text([PROMPT])
    cut = clip.image_size
    g = torch.Generator(device=device).manual_seed(0)

    def vector_quantize(z: torch.Tensor) -> torch.Tensor:
        flat = z.movedim(1, 3)
        d = flat.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.T
        x_q = F.one_hot(d.argmin(-1), codebook.shape[0]).to(d.dtype) @ codebook
        return (x_q - flat).detach().add(flat).movedim(3, 1)  # replace_grad(x_q, x)

    def make_cutouts(img: torch.Tensor) -> torch.Tensor:
        side_y, side_x = img.shape[-2:]
        max_size, min_size = min(side_x, side_y), min(side_x, side_y, cut)
        crops = []
        for _ in range(cutouts):
            s = int(torch.rand([], generator=g, device=device) * (max_size - min_size) + min_size)
            ox = int(torch.randint(0, side_x - s + 1, (), generator=g, device=device))
            oy = int(torch.randint(0, side_y - s + 1, (), generator=g, device=device))
            crops.append(F.adaptive_avg_pool2d(img[:, :, oy : oy + s, ox : ox + s], cut))
        batch = torch.cat(crops)
        n = batch.shape[0]
        flip = torch.where(torch.rand(n, generator=g, device=device) < 0.5, -1.0, 1.0)
        ang = (torch.rand(n, generator=g, device=device) * 2 - 1) * math.radians(15)
        theta = torch.zeros(n, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 1] = ang.cos() * flip, -ang.sin()
        theta[:, 1, 0], theta[:, 1, 1] = ang.sin() * flip, ang.cos()
        theta[:, :, 2] = (torch.rand(n, 2, generator=g, device=device) * 2 - 1) * 0.2
        batch = F.grid_sample(batch, F.affine_grid(theta, list(batch.shape), align_corners=False),
                              padding_mode="border", align_corners=False)  # fmt: skip
        persp = F.affine_grid(
            theta * 0 + torch.eye(2, 3, device=device), list(batch.shape), align_corners=False
        )
        persp = persp * (
            1 + 0.2 * (torch.rand(n, 1, 1, 2, generator=g, device=device) - 0.5) * persp.flip(-1)
        )
        batch = F.grid_sample(batch, persp, padding_mode="border", align_corners=False)
        grey = batch.mean(1, keepdim=True)
        sat = 1 + (torch.rand(n, 1, 1, 1, generator=g, device=device) - 0.5) * 0.2
        batch = grey + (batch - grey) * sat
        facs = batch.new_empty([n, 1, 1, 1]).uniform_(0, 0.1, generator=g)
        return batch + facs * torch.randn(batch.shape, generator=g, device=device)

    def run(clock: StepClock) -> None:
        with torch.no_grad():
            z = vector_quantize(vq.encode(x))
        z.requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.1)
        for _ in range(steps):
            out = clamp_with_grad(vq.decode(vector_quantize(z)).add(1).div(2), 0, 1)
            embeds = clip.encode_image(clip.normalize(make_cutouts(out))).float()
            loss = spherical_distance(embeds, text).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                z.copy_(z.maximum(vq.z_min).minimum(vq.z_max))
            _ = loss.item()  # the notebook's checkin / progress
            clock(None)

    return measure(device, run)
