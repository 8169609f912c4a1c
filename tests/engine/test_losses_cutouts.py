"""CLIP losses, cutouts and the StyleCLIP learning-rate schedule (no models needed)."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F

from engine.pipeline.cutouts import MakeCutouts
from engine.pipeline.losses import (
    clip_similarity,
    spherical_distance,
    styleclip_loss,
    weighted_prompt_loss,
)
from engine.pipeline.schedule import styleclip_lr
from tests.engine.op_log import OpLog

# --- losses ----------------------------------------------------------------------------------


def test_spherical_distance_known_angles() -> None:
    e = torch.eye(4)
    a = torch.stack([e[0], e[0], e[0]])
    b = torch.stack([e[0] * 3, -e[0], e[1] * 0.5])  # same direction, opposite, orthogonal
    d = spherical_distance(a, b)
    assert d.shape == (3, 3)
    assert d[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert d[0, 1].item() == pytest.approx(2 * (math.pi / 2) ** 2)  # = π²/2
    assert d[0, 2].item() == pytest.approx(math.pi**2 / 8)  # θ = π/2 -> θ²/2


def test_spherical_distance_is_half_the_squared_angle() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 16, generator=g), torch.randn(7, 16, generator=g)
    theta = clip_similarity(a, b).clamp(-1, 1).acos()
    torch.testing.assert_close(spherical_distance(a, b), theta**2 / 2, atol=1e-5, rtol=1e-5)


def test_spherical_distance_gradients_are_finite_at_the_extremes() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    b = torch.tensor([[2.0, 0.0, 0.0], [-1.0, 1e-4, 0.0]])
    spherical_distance(a, b).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_clip_similarity_is_cosine() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, -3.0]])
    expected = torch.tensor([[1.0, 0.0], [1 / math.sqrt(2), -1 / math.sqrt(2)]])
    torch.testing.assert_close(clip_similarity(a, b), expected)


def test_weighted_prompt_loss_is_weighted_sum_of_mean_distances() -> None:
    g = torch.Generator().manual_seed(2)
    images, prompts = torch.randn(6, 8, generator=g), torch.randn(3, 8, generator=g)
    weights = [1.0, -0.5, 2.0]
    loss = weighted_prompt_loss(images, prompts, weights)
    d = spherical_distance(images, prompts).mean(dim=0)
    assert loss.item() == pytest.approx((d * torch.tensor(weights)).sum().item(), rel=1e-6)
    with pytest.raises(ValueError, match="expected 3 weights"):
        weighted_prompt_loss(images, prompts, [1.0, 2.0])


@pytest.mark.parametrize("weight", [1.0, -1.0])
def test_prompt_weight_sign_sets_the_direction(weight: float) -> None:
    g = torch.Generator().manual_seed(3)
    prompt = torch.randn(1, 32, generator=g)
    embed = torch.randn(4, 32, generator=g).requires_grad_(True)
    before = clip_similarity(embed, prompt).mean().item()
    opt = torch.optim.SGD([embed], lr=0.5)
    for _ in range(10):
        opt.zero_grad()
        weighted_prompt_loss(embed, prompt, [weight]).backward()
        opt.step()
    after = clip_similarity(embed, prompt).mean().item()
    assert (after - before) * weight > 0.05


def test_styleclip_loss_terms() -> None:
    image = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[1.0, 1.0]])
    start = torch.zeros(1, 3, 2)
    latent = torch.full((1, 3, 2), 0.5, requires_grad=True)
    total, clip_term, l2_term = styleclip_loss(image, text, latent, start, l2_lambda=0.1)
    assert clip_term.item() == pytest.approx(1 - 1 / math.sqrt(2))
    assert l2_term.item() == pytest.approx(6 * 0.25)
    assert total.item() == pytest.approx(clip_term.item() + 0.1 * 1.5)
    total.backward()
    torch.testing.assert_close(latent.grad, torch.full((1, 3, 2), 0.1 * 2 * 0.5))


# --- cutouts ---------------------------------------------------------------------------------


def _image(h: int = 40, w: int = 52, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_cutouts_shape_and_seeded_reproducibility() -> None:
    cut = MakeCutouts(16, 8)
    image = _image()
    a = cut(image, torch.Generator().manual_seed(5))
    b = cut(image, torch.Generator().manual_seed(5))
    c = cut(image, torch.Generator().manual_seed(6))
    assert a.shape == (8, 3, 16, 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_cutouts_without_augmentation_are_pooled_crops() -> None:
    """Each plain cutout is the area-average of a square crop with a side in [cut_size, min side]."""
    image = _image(12, 10)
    cut_size = 4
    out = MakeCutouts(cut_size, 6, augment=False, noise_fac=0)(image, torch.Generator().manual_seed(0))
    crops = {
        (s, y, x): F.adaptive_avg_pool2d(image[:, :, y : y + s, x : x + s], cut_size)[0]
        for s in range(cut_size, 11)
        for y in range(12 - s + 1)
        for x in range(10 - s + 1)
    }
    sizes = set()
    for cutout in out:
        matches = [key for key, crop in crops.items() if torch.equal(crop, cutout)]
        assert matches, "a cutout is not a pooled square crop of the image"
        sizes.add(matches[0][0])
    assert len(sizes) > 1  # sizes are drawn, not fixed


def test_cut_pow_favours_small_crops() -> None:
    """A constant-per-column image: the spread of a cutout's columns grows with the crop side."""
    image = torch.linspace(0, 1, 64).expand(1, 3, 64, 64).contiguous()

    def mean_span(cut_pow: float) -> float:
        out = MakeCutouts(8, 64, cut_pow=cut_pow, augment=False, noise_fac=0)(
            image, torch.Generator().manual_seed(0)
        )
        return (out[..., -1] - out[..., 0]).mean().item()

    assert mean_span(4.0) < mean_span(1.0) < mean_span(0.25)


def test_identity_augmentation_leaves_cutouts_unchanged() -> None:
    """Zero-strength augmentations applied with probability 1: the warp grid hits pixel centres."""
    image = _image()
    plain = MakeCutouts(16, 5, augment=False, noise_fac=0)(image, torch.Generator().manual_seed(1))
    identity = MakeCutouts(
        16,
        5,
        noise_fac=0,
        flip_p=0,
        aug_p=1,
        degrees=0,
        translate=0,
        scale=(1, 1),
        perspective=0,
        brightness=0,
        contrast=0,
        saturation=0,
        hue=0,
    )
    # The augmenting module draws more numbers, but the crop draws come first.
    torch.testing.assert_close(identity(image, torch.Generator().manual_seed(1)), plain, atol=1e-5, rtol=0)


def test_flip_with_probability_one_mirrors_every_cutout() -> None:
    image = _image()
    plain = MakeCutouts(16, 5, augment=False, noise_fac=0)(image, torch.Generator().manual_seed(1))
    flipped = MakeCutouts(
        16,
        5,
        noise_fac=0,
        flip_p=1,
        aug_p=0,
    )(image, torch.Generator().manual_seed(1))
    torch.testing.assert_close(flipped, plain.flip(-1), atol=1e-5, rtol=0)


def test_colour_jitter_keeps_grey_grey_and_changes_colour() -> None:
    grey = torch.full((1, 3, 32, 32), 0.5)
    colour_only = dict(noise_fac=0, flip_p=0, aug_p=1, degrees=0, translate=0, scale=(1, 1), perspective=0)
    out = MakeCutouts(16, 8, brightness=0, contrast=0.3, saturation=0.5, hue=0.2, **colour_only)(
        grey, torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out, torch.full_like(out, 0.5), atol=1e-5, rtol=0)

    red = torch.zeros(1, 3, 32, 32)
    red[:, 0] = 0.8
    out = MakeCutouts(16, 8, brightness=0, contrast=0, saturation=0, hue=0.2, **colour_only)(
        red, torch.Generator().manual_seed(0)
    )
    per_cut = out.mean(dim=(2, 3))
    assert (per_cut[:, 1:].abs().sum(dim=1) > 0.01).all()  # hue turned some red into green/blue
    # A rotation about the grey axis keeps the grey level (sum of channels).
    torch.testing.assert_close(per_cut.sum(dim=1), torch.full((8,), 0.8), atol=1e-4, rtol=0)


def test_augmented_cutouts_differ_and_pass_gradients() -> None:
    image = _image().requires_grad_(True)
    cut = MakeCutouts(16, 8, noise_fac=0.1)
    out = cut(image, torch.Generator().manual_seed(0))
    plain = MakeCutouts(16, 8, augment=False, noise_fac=0)(image, torch.Generator().manual_seed(0))
    assert not torch.allclose(out, plain, atol=1e-3)
    out.square().mean().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_cutouts_of_an_image_smaller_than_the_cut_size_are_upsampled() -> None:
    out = MakeCutouts(32, 3)(_image(20, 24), torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 32, 32)


def test_cutouts_reject_a_batch() -> None:
    with pytest.raises(ValueError, match="one image"):
        MakeCutouts(8, 2)(torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize(
    ("height", "width", "cut_size"),
    [(80, 96, 32), (96, 80, 32), (75, 61, 24), (20, 24, 32), (26, 21, 32)],
    ids=["wide", "tall", "odd-sides", "upsampled-wide", "upsampled-tall"],
)
@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_static_shape_crops_equal_the_loop_in_values_and_gradients(
    height: int, width: int, cut_size: int, augment: bool
) -> None:
    """The matrix-product crops are the loop's crops (the same draws, bins and bilinear weights)."""
    image = _image(height, width, seed=3).requires_grad_(True)
    grad_out = torch.randn(12, 3, cut_size, cut_size, generator=torch.Generator().manual_seed(4))
    noise = 0.1 if augment else 0
    results = []
    for static in (False, True):
        cut = MakeCutouts(cut_size, 12, augment=augment, noise_fac=noise, static_shapes=static)
        out = cut(image, torch.Generator().manual_seed(1), random.Random(7))
        (grad,) = torch.autograd.grad(out, image, grad_out)
        results.append((out, grad))
    (loop, loop_grad), (static_out, static_grad) = results
    torch.testing.assert_close(static_out, loop, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(static_grad, loop_grad, atol=1e-5, rtol=1e-5)


def test_static_boxes_are_the_loops_draws() -> None:
    cut = MakeCutouts(32, 6)
    boxes = cut.boxes(random.Random(11), (80, 96), torch.device("cpu"))
    assert boxes.dtype == torch.int64 and boxes.shape == (6, 3)
    assert [tuple(b) for b in boxes.tolist()] == cut.draw(random.Random(11), (80, 96))
    written = torch.zeros(6, 3, dtype=torch.int64)
    assert cut.boxes(random.Random(11), (80, 96), torch.device("cpu"), out=written) is written
    assert torch.equal(written, boxes)


def _op_shapes(static: bool, seed: int) -> list[tuple[str, tuple[tuple[int, ...], ...]]]:
    """The ops and shapes of one forward + backward of the cutouts, for crops drawn with `seed`."""
    cut = MakeCutouts(32, 8, static_shapes=static)
    image = _image(80, 96).requires_grad_(True)
    with OpLog() as log:
        out = cut(image, torch.Generator().manual_seed(0), random.Random(seed))
        out.sum().backward()
    return log.ops


def test_static_shape_crops_run_the_same_shapes_whatever_the_draws() -> None:
    assert _op_shapes(True, seed=1) == _op_shapes(True, seed=2)
    # The loop's shapes follow the draws: the comparison above can fail.
    assert _op_shapes(False, seed=1) != _op_shapes(False, seed=2)


# --- schedule --------------------------------------------------------------------------------


def _styleclip_reference(t: float, base: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """StyleCLIP's get_lr at a given t (the original evaluates it at t = step/total)."""
    ramp = min(1, (1 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return base * ramp * min(1, t / rampup)


def test_schedule_first_step_moves_peak_is_base_last_is_small() -> None:
    total, base = 40, 0.1
    lrs = [styleclip_lr(i, total, base) for i in range(total)]
    assert lrs[0] > 0
    assert max(lrs) == pytest.approx(base)
    assert lrs[total // 2] == pytest.approx(base)
    assert 0 < lrs[-1] < 0.01 * base
    # Warm-up rises, ramp-down falls.
    assert lrs[0] < lrs[1] <= lrs[2] == base
    assert all(a >= b for a, b in itertools.pairwise(lrs[29:]))
    assert lrs[29] == base and lrs[31] < base


@pytest.mark.parametrize("total", [1, 7, 40, 300])
def test_schedule_matches_styleclip_at_step_midpoints(total: int) -> None:
    for i in range(total):
        t = (i + 0.5) / total
        assert styleclip_lr(i, total, 0.3) == pytest.approx(_styleclip_reference(t, 0.3))
    assert styleclip_lr(0, 1, 0.3) == pytest.approx(0.3)


def test_schedule_rejects_steps_out_of_range() -> None:
    with pytest.raises(ValueError):
        styleclip_lr(40, 40, 0.1)
    with pytest.raises(ValueError):
        styleclip_lr(0, 0, 0.1)
