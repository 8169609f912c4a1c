"""CLIP losses of the three stages, on embeddings (no model calls here)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def spherical_distance(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise great-circle loss `2·arcsin(‖â − b̂‖ / 2)²` of [N, D] and [M, D] -> [N, M].

    With θ the angle between the embeddings, ‖â − b̂‖ = 2·sin(θ/2), so this is θ²/2: 0 for equal
    directions, π²/2 for opposite ones. Unlike 1 − cos, its gradient does not vanish as θ → π.
    """
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    chord = (a[:, None, :] - b[None, :, :]).norm(dim=-1)
    # Rounding can push the chord of opposite vectors a hair past 2, where arcsin is NaN.
    return (chord / 2).clamp(max=1.0).arcsin().pow(2).mul(2)


def weighted_prompt_loss(
    image_embeds: Tensor, prompt_embeds: Tensor, weights: Tensor | Sequence[float]
) -> Tensor:
    """VQGAN+CLIP's loss: spherical distance averaged over cutouts, weighted sum over prompts.

    `image_embeds` [N_cut, D], `prompt_embeds` [P, D], `weights` [P]. A negative weight makes
    the loss fall as the image moves away from that prompt (|w|·sign(w)·dist = w·dist).
    """
    weights = torch.as_tensor(weights, dtype=image_embeds.dtype, device=image_embeds.device)
    if weights.shape != (prompt_embeds.shape[0],):
        raise ValueError(f"expected {prompt_embeds.shape[0]} weights, got shape {tuple(weights.shape)}")
    dists = spherical_distance(image_embeds, prompt_embeds.to(image_embeds.dtype))
    return (dists.mean(dim=0) * weights).sum()


def clip_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise cosine similarity of [N, D] and [M, D] embeddings -> [N, M]."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def styleclip_loss(
    image_embed: Tensor, text_embed: Tensor, latent: Tensor, start_latent: Tensor, l2_lambda: float
) -> tuple[Tensor, Tensor, Tensor]:
    """StyleCLIP's free-generation loss: `(1 − cos) + λ·‖w − w_start‖²`; returns (total, clip, l2).

    1 − cos is what StyleCLIP optimises (`1 − logits/100`, logit scale 100), and its defaults
    (lr 0.1, λ 0.008, 40 steps) were tuned against that scale, so we keep it rather than the
    spherical distance of stages 2 and 3 (which has a steeper gradient, θ/sin θ times larger).
    """
    clip_term = (1 - clip_similarity(image_embed, text_embed)).mean()
    l2_term = (latent - start_latent).pow(2).sum()
    return clip_term + l2_lambda * l2_term, clip_term, l2_term
